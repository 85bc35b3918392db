"""Study flows: each reproduces one paper end to end over the library (data, engine, export, evaluation)."""
