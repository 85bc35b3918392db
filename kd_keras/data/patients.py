"""Patient identity: which images come from the same person, so that splits never put one patient on both sides.

Public datasets encode the patient in the file name, each its own way. A rule per layout (``PATIENT_RULES``):

| rule | layout | example file -> patient |
| --- | --- | --- |
| ``oct2017`` | Kermany OCT2017, synthetic OCT: ``<CLASS>-<patient>-<n>`` | ``CNV-1016042-1.jpeg`` -> ``1016042`` |
| ``kermany_cxr`` | Kermany chest X-ray, normal: ``IM-<p>-<n>[-<n>]`` | ``IM-0115-0001.jpeg`` -> ``IM-0115`` |
| | second normal batch: ``NORMAL2-IM-<p>-<n>[-<n>]`` | ``NORMAL2-IM-1427-0001.jpeg`` -> ``NORMAL2-IM-1427`` |
| | pneumonia: ``person<p>_<bacteria or virus>_<n>[_<n>]`` | ``person100_bacteria_475.jpeg`` -> ``person100`` |
| ``eyepacs`` | EyePACS / Kaggle DR: ``<patient>_<left or right>`` | ``10_left.jpeg`` -> ``10`` |
| ``chexpert`` | CheXpert: ``.../patient<id>/study<n>/<view>.jpg`` | ``train/patient00001/study1/view1.jpg`` -> |
| | | ``patient00001`` |
| ``stem`` | anything else: every file is its own patient | ``scan_42.png`` -> ``scan_42`` |

A CSV source can name a patient column instead (:func:`kd_keras.data.sources.from_csv`).

``rule="auto"`` (the default) picks, for a whole source, the rule that matches the most of its files (ties:
``AUTO_ORDER``, chest X-ray before OCT because ``IM-0115-0001`` also fits the OCT pattern), so one odd file
cannot switch a dataset's rule. Files the chosen rule does not match become their own patient and are noted in
the report (``own_patient``): they cannot leak across splits with files they are not linked to, but if they are
really another patient's images, only a patient column can say so.

Note the ids are strings and are only compared within one source: EyePACS patient ``10`` and OCT patient ``10``
are unrelated.

Example:

```python
from kd_keras.data.patients import patient_id, patient_ids

patient_id("CNV-1016042-1.jpeg")                      # "1016042"
patient_id("person100_bacteria_475.jpeg")             # "person100"
ids, rule = patient_ids(["10_left.jpeg", "10_right.jpeg", "13_left.jpeg"])  # ["10", "10", "13"], "eyepacs"
```
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

_STEM_SUFFIX = re.compile(r"\.[A-Za-z][A-Za-z0-9]{1,4}$")  # .jpeg, .png, .tif, ... (not "-0001")


def _stem(path: str) -> str:
    name = os.path.basename(path.replace("\\", "/"))
    return _STEM_SUFFIX.sub("", name)


@dataclass(frozen=True)
class PatientRule:
    """A named way of reading a patient id from a path.

    Args:
        name: the rule's name (a key of ``PATIENT_RULES``).
        description: what it matches, for docs and reports.
        extract: ``path -> patient id`` or ``None`` when the path does not follow the rule.
    """

    name: str
    description: str
    extract: Callable[[str], str | None]

    def __call__(self, path: str | os.PathLike) -> str | None:
        return self.extract(os.fspath(path))


def _regex_on_stem(pattern: str) -> Callable[[str], str | None]:
    compiled = re.compile(pattern)

    def extract(path: str) -> str | None:
        match = compiled.fullmatch(_stem(path))
        if not match:
            return None
        return next(group for group in match.groups() if group is not None)  # alternatives have their own group

    return extract


_CHEXPERT = re.compile(r"^(patient\d+)$")


def _chexpert(path: str) -> str | None:
    for part in reversed(path.replace("\\", "/").split("/")[:-1]):
        match = _CHEXPERT.match(part)
        if match:
            return match.group(1)
    return None


def _stem_rule(path: str) -> str:
    return _stem(path)


PATIENT_RULES: dict[str, PatientRule] = {
    rule.name: rule
    for rule in (
        PatientRule("oct2017", "<CLASS>-<patient digits>-<n> (Kermany OCT2017, synthetic OCT)",
                    _regex_on_stem(r"[A-Za-z][A-Za-z0-9_]*-(\d+)-\d+")),
        PatientRule("kermany_cxr", "IM-<p>-<n>[-<n>], NORMAL2-IM-<p>-<n>[-<n>], person<p>_<bacteria|virus>_<n>[_<n>]"
                    " (Kermany chest X-ray)",
                    _regex_on_stem(r"((?:NORMAL\d*-)?IM-\d+)-\d+(?:-\d+)*|(person\d+)_(?:bacteria|virus)_\d+(?:_\d+)*")),
        PatientRule("eyepacs", "<patient>_<left|right> (EyePACS / Kaggle DR)",
                    _regex_on_stem(r"(\d+)_(?:left|right)")),
        PatientRule("chexpert", ".../patient<id>/study<n>/<view>.jpg (CheXpert)", _chexpert),
        PatientRule("stem", "the file name without its suffix: every file is its own patient", _stem_rule),
    )
}
# kermany_cxr before oct2017: "IM-0115-0001" also fits <CLASS>-<digits>-<n>, and the more specific rule wins.
AUTO_ORDER = ("kermany_cxr", "oct2017", "eyepacs", "chexpert")


def get_rule(rule: str | PatientRule) -> PatientRule:
    """The :class:`PatientRule` named ``rule`` (or ``rule`` itself).

    Example:

    ```python
    get_rule("eyepacs")("10_left.jpeg")  # "10"
    ```
    """
    if isinstance(rule, PatientRule):
        return rule
    if rule not in PATIENT_RULES:
        raise ValueError(f"unknown patient rule {rule!r}; choose from {sorted(PATIENT_RULES)} or 'auto'")
    return PATIENT_RULES[rule]


def patient_id(path: str | os.PathLike, rule: str | PatientRule = "auto") -> str | None:
    """The patient id of one file by ``rule`` (``"auto"``: the first rule of ``AUTO_ORDER`` that matches).

    Returns ``None`` when the named rule does not match (``"auto"`` falls back to the file's stem).

    Example:

    ```python
    patient_id("NORMAL2-IM-1427-0001.jpeg")  # "NORMAL2-IM-1427"
    patient_id("IM-0115-0001.jpeg", "oct2017")  # None: not an OCT2017 name
    ```
    """
    path = os.fspath(path)
    if rule == "auto":
        for name in AUTO_ORDER:
            found = PATIENT_RULES[name](path)
            if found is not None:
                return found
        return _stem(path)
    return get_rule(rule)(path)


def choose_rule(paths: Sequence[str], candidates: Sequence[str] = AUTO_ORDER, sample: int = 2000) -> str:
    """The rule among ``candidates`` that matches the most of ``paths`` (``"stem"`` if none matches any).

    Only an evenly spaced sample of at most ``sample`` paths is tried, so a pool of 500k files is cheap.

    Example:

    ```python
    choose_rule(["person1_virus_6.jpeg", "IM-0115-0001.jpeg"])  # "kermany_cxr"
    ```
    """
    if len(paths) == 0:
        return "stem"
    step = max(1, len(paths) // sample)
    probe = [os.fspath(paths[i]) for i in range(0, len(paths), step)]
    best, best_hits = "stem", 0
    for name in candidates:
        hits = sum(PATIENT_RULES[name](path) is not None for path in probe)
        if hits > best_hits:
            best, best_hits = name, hits
    return best


def patient_ids(paths: Sequence[str], rule: str | PatientRule = "auto", report=None) -> tuple[np.ndarray, str]:
    """Patient ids of many files by one rule.

    Args:
        paths: file paths (absolute or relative; only the name, and for ``chexpert`` the folders, are read).
        rule: a rule name, a :class:`PatientRule`, or ``"auto"`` (the rule matching most files, see
            :func:`choose_rule`).
        report: a :class:`kd_keras.data.validate.DataReport`; every file the rule does not match is noted there
            (``own_patient``) and becomes its own patient.

    Returns:
        ``(ids, rule_name)``: an object array of strings and the rule used.

    Example:

    ```python
    ids, rule = patient_ids(records.paths)
    ```
    """
    chosen = get_rule(choose_rule(paths) if rule == "auto" else rule)
    ids = np.empty(len(paths), dtype=object)
    for i, path in enumerate(paths):
        path = os.fspath(path)
        found = chosen(path)
        if found is None:
            found = "file:" + _stem(path)  # prefixed, so it can never equal a real patient id of this rule
            if report is not None:
                report.note("own_patient", path, f"no {chosen.name!r} patient rule match; the file is its own patient")
        ids[i] = found
    return ids, chosen.name
