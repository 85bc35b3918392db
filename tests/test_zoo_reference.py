"""The zoo's students compute what imgclsmob computes (issue 23, item 1).

For each student, the Keras model from :func:`kd_keras.models.build_model` and imgclsmob's own PyTorch
implementation (the ``pytorchcv`` package) are given the same weights, and their logits on real photographs must
agree to a relative 1e-4. Parameter counts and shapes cannot tell an identity shortcut from a linear layer of the
same size, a swapped channel shuffle or a wrong normalisation; logits can.

The weights start as pytorchcv's random initialisation with BatchNorm statistics and affine parameters randomised
too (so a BatchNorm left out, or applied twice, changes the logits), and are copied across by layer kind, in
order of computation (pytorchcv's forward pass, recorded with hooks; the Keras graph walked branch by branch):
convolution kernels OIHW -> HWIO, depthwise kernels (C, 1, H, W) -> (H, W, C, 1), BatchNorm gamma/beta/mean/var
(and the same epsilon), dense weights transposed. The number of layers of each kind must match, and every shape.

The zoo's models take [0, 255] pixels and normalise inside (:class:`kd_keras.models.layers.PixelNormalization`,
ImageNet mean and std); pytorchcv takes normalised NCHW input, so the torch input gets the same normalisation,
written out here from the ImageNet constants rather than taken from the zoo.

The reference models are built from their family modules (``pytorchcv.models.<family>``) rather than through
``pytorchcv.model_provider.get_model``: the provider imports every model in the package, one of which needs
``torchvision``, and no ``torchvision`` wheel loads with the CPU build of torch the ``reference`` extra pins. The
builder functions are the ones ``get_model`` calls for the same names.

Slow tier only; skipped when torch or pytorchcv is not installed (``pip install -e ".[reference]"``).
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

pytestmark = pytest.mark.slow

# Student name -> the pytorchcv module that defines it (same name in both).
REFERENCE_MODULES = {
    "mobilenet_wd4": "mobilenet",
    "fdmobilenet_wd4": "fdmobilenet",
    "mobilenetv2_wd4": "mobilenetv2",
    "mobilenetv3_small_w1": "mobilenetv3",
    "squeezenet_v1_1": "squeezenet",
    "squeezeresnet_v1_1": "squeezenet",
    "shufflenet_g1_wd4": "shufflenet",
    "shufflenetv2_wd2": "shufflenetv2",
    "sqnxt23_w1": "squeezenext",
}

# ImageNet statistics on the [0, 255] scale (torchvision's, which imgclsmob trains with).
IMAGENET_MEAN_255 = np.array([0.485, 0.456, 0.406], dtype=np.float64) * 255.0
IMAGENET_STD_255 = np.array([0.229, 0.224, 0.225], dtype=np.float64) * 255.0

RELATIVE_TOLERANCE = 1e-4

# Students whose imgclsmob original puts a ReLU on the logits, which the zoo leaves out by design.
RELU_ON_LOGITS = {"squeezenet_v1_1", "squeezeresnet_v1_1"}


@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch", reason="the reference comparison needs torch (extra 'reference')")
    pytest.importorskip("pytorchcv", reason="the reference comparison needs pytorchcv (extra 'reference')")
    return torch


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    """Three real RGB photographs, resized to 224x224, float32 pixels in [0, 255], NHWC."""
    from skimage import data, transform

    images = []
    for image in (data.astronaut(), data.coffee(), data.chelsea()):
        resized = transform.resize(image, (224, 224), order=1, anti_aliasing=True, preserve_range=True)
        images.append(resized.astype(np.float32))
    return np.stack(images)


def _torch_layers(torch, model, example) -> dict[str, list]:
    """pytorchcv's weight layers by kind, in the order its forward pass calls them.

    A 1x1 convolution of the classifier (``model.output``) applied to a 1x1 map (imgclsmob's classifier after the
    pool in MobileNetV2/V3) is the same as a dense layer, and is counted as one.
    """
    nn = torch.nn
    kinds: dict[str, list] = {"conv": [], "depthwise": [], "batchnorm": [], "dense": []}
    classifier = set(map(id, model.output.modules()))

    def record(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            on_pooled_map = tuple(inputs[0].shape[2:]) == (1, 1)
            if id(module) in classifier and module.kernel_size == (1, 1) and on_pooled_map:
                kinds["dense"].append(module)
            elif module.groups > 1 and module.groups == module.in_channels == module.out_channels:
                kinds["depthwise"].append(module)
            else:
                kinds["conv"].append(module)
        elif isinstance(module, nn.BatchNorm2d):
            kinds["batchnorm"].append(module)
        elif isinstance(module, nn.Linear):
            kinds["dense"].append(module)

    handles = []
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv3d, nn.BatchNorm1d, nn.ConvTranspose2d)):
            raise AssertionError(f"no Keras counterpart handled for {type(module).__name__}")
        if isinstance(module, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)):
            handles.append(module.register_forward_hook(record))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    weighted = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))]
    assert sum(len(v) for v in kinds.values()) == len(weighted), "a weight layer ran twice or never"
    return kinds


def _keras_execution_order(model) -> list:
    """The Keras model's layers in depth-first post-order from the output, inputs in the order a layer takes them.

    Keras' own ``model.layers`` is a topological order that interleaves parallel branches (ShuffleNetV2's two
    branches alternate), so it cannot be matched with pytorchcv's forward pass; this order runs each branch to its
    end before the next one, as the ``forward`` methods do (``torch.cat((y1, y2))`` computes ``y1`` first).
    The inputs of an ``Add`` (which commutes, so the zoo may list them either way) are visited shortest branch
    first, as imgclsmob computes a shortcut (``identity = self.identity_conv(x)``) before the body.
    """
    import keras

    ancestors: dict[int, frozenset] = {}  # layer id -> ids of the layers it depends on, itself included
    for layer in model.layers:  # topological order: parents come first
        parents = [t._keras_history[0] for node in layer._inbound_nodes for t in node.input_tensors]
        ancestors[id(layer)] = frozenset({id(layer)}).union(*(ancestors[id(p)] for p in parents))
    order, seen = [], set()
    # Iterative DFS: (tensor, inputs_done) pairs, so that deep models need no recursion.
    stack = [(tensor, False) for tensor in reversed(model.outputs)]
    while stack:
        tensor, inputs_done = stack.pop()
        layer, node_index, _ = tensor._keras_history
        if id(layer) in seen:
            continue
        node = layer._inbound_nodes[node_index]
        if inputs_done:
            seen.add(id(layer))
            order.append(layer)
            continue
        stack.append((tensor, True))
        parents = list(node.input_tensors)
        if isinstance(layer, keras.layers.Add):
            parents.sort(key=lambda parent: len(ancestors[id(parent._keras_history[0])]))
        stack.extend((parent, False) for parent in reversed(parents))
    return order


def _keras_layers(model) -> dict[str, list]:
    """The Keras model's weight layers by kind, in execution order."""
    import keras

    kinds: dict[str, list] = {"conv": [], "depthwise": [], "batchnorm": [], "dense": []}
    for layer in _keras_execution_order(model):
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kinds["depthwise"].append(layer)
        elif isinstance(layer, keras.layers.Conv2D):
            kinds["conv"].append(layer)
        elif isinstance(layer, keras.layers.BatchNormalization):
            kinds["batchnorm"].append(layer)
        elif isinstance(layer, keras.layers.Dense):
            kinds["dense"].append(layer)
        elif layer.weights:
            raise AssertionError(f"no torch counterpart handled for {type(layer).__name__} {layer.name!r}")
    assert sum(len(v) for v in kinds.values()) == sum(1 for layer in model.layers if layer.weights)
    return kinds


def _randomise_batchnorm(torch, model, seed: int) -> None:
    """Non-trivial BatchNorm statistics and affine parameters, so that every BatchNorm changes the logits."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                shape = module.weight.shape
                module.weight.copy_(0.5 + torch.rand(shape, generator=generator))
                module.bias.copy_(0.1 * torch.randn(shape, generator=generator))
                module.running_mean.copy_(0.1 * torch.randn(shape, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(shape, generator=generator))


def _copy_weights(torch_kinds: dict[str, list], keras_kinds: dict[str, list]) -> None:
    """Copies every torch weight into its Keras counterpart (same kind, same position); checks shapes and counts."""
    for kind in ("conv", "depthwise", "batchnorm", "dense"):
        sources, targets = torch_kinds[kind], keras_kinds[kind]
        assert len(sources) == len(targets), f"{kind}: {len(sources)} in pytorchcv, {len(targets)} in the zoo"
        for index, (source, target) in enumerate(zip(sources, targets, strict=True)):
            where = f"{kind} #{index} ({target.name!r})"
            if kind == "batchnorm":
                values = [source.weight, source.bias, source.running_mean, source.running_var]
                values = [v.detach().numpy() for v in values]
                assert target.epsilon == pytest.approx(source.eps), f"{where}: epsilon {target.epsilon} vs {source.eps}"
            else:
                kernel = source.weight.detach().numpy()
                if kind == "conv":
                    kernel = kernel.transpose(2, 3, 1, 0)  # OIHW -> HWIO (grouped: O, I/g, H, W -> H, W, I/g, O)
                    assert target.groups == source.groups, f"{where}: groups {target.groups} vs {source.groups}"
                    assert tuple(target.strides) == tuple(source.stride), f"{where}: strides differ"
                elif kind == "depthwise":
                    kernel = kernel.transpose(2, 3, 0, 1)  # (C, 1, H, W) -> (H, W, C, 1)
                    assert tuple(target.strides) == tuple(source.stride), f"{where}: strides differ"
                else:
                    kernel = kernel.reshape(kernel.shape[0], -1).T  # (out, in[, 1, 1]) -> (in, out)
                values = [kernel]
                has_bias = source.bias is not None
                assert target.use_bias == has_bias, f"{where}: bias {target.use_bias} vs {has_bias}"
                if has_bias:
                    values.append(source.bias.detach().numpy())
            expected_shapes = [tuple(w.shape) for w in target.get_weights()]
            assert [v.shape for v in values] == expected_shapes, f"{where}: shapes {expected_shapes}"
            target.set_weights(values)


@pytest.mark.parametrize("name", sorted(REFERENCE_MODULES))
def test_student_logits_match_imgclsmob(torch, photos, name):
    from kd_keras.models import build_model

    module = importlib.import_module(f"pytorchcv.models.{REFERENCE_MODULES[name]}")
    torch.manual_seed(0)
    reference = getattr(module, name)(pretrained=False)
    _randomise_batchnorm(torch, reference, seed=1)
    reference.eval()

    if name in RELU_ON_LOGITS:
        # The zoo leaves out imgclsmob's ReLU after SqueezeNet's classifier conv, on purpose (its docstring): a
        # ReLU-clipped logit cannot be negative. Everything before it must agree.
        reference.output.final_activ = torch.nn.Identity()

    normalised = (photos.astype(np.float64) - IMAGENET_MEAN_255) / IMAGENET_STD_255
    torch_input = torch.from_numpy(normalised.transpose(0, 3, 1, 2).astype(np.float32))
    student = build_model(name, (224, 224, 3), 1000)
    _copy_weights(_torch_layers(torch, reference, torch_input[:1]), _keras_layers(student))

    with torch.no_grad():
        expected = reference(torch_input).numpy()
    actual = np.asarray(student(photos, training=False))

    assert actual.shape == expected.shape == (len(photos), 1000)
    # The photographs must lead to different logits, or the comparison would not see the input at all.
    assert np.abs(expected[0] - expected[1]).max() > 1e-3 * np.abs(expected).max()
    relative = np.abs(actual - expected).max() / np.abs(expected).max()
    print(f"{name}: max relative difference {relative:.2e}")
    assert relative < RELATIVE_TOLERANCE, f"{name}: max relative difference {relative:.2e}"
