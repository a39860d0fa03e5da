"""A comparison of a model on a GPU, with the data on the CPU: each variant runs where its parameters are, int8
variants on the CPU with a flag, recipes that train fine-tune on the GPU from CPU batches, and each measured step is
synchronised. Runs only where torch sees a CUDA device (CI has none; the moves themselves are checked against the
``meta`` device in tests/comparison/test_devices.py). Its data are made here, not read by scikit-learn, so it runs
on a GPU machine with torch, pytest and greenmeter's own code (benchmarks/gpu_check.sh)."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)

from greenmeter.comparison.batches import model_device  # noqa: E402
from greenmeter.comparison.compare import compare  # noqa: E402
from greenmeter.comparison.recipes import RecipeContext, build_variant  # noqa: E402
from greenmeter.compression.quantization import INT8_ON_CPU  # noqa: E402
from greenmeter.demo.digits import DigitsData, batches, make_digits_cnn, train_classifier  # noqa: E402

CUDA = torch.device("cuda", 0)


def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.inference_mode():
        return float((model(x).argmax(dim=1) == y).float().mean())


@pytest.fixture(scope="module")
def digits() -> DigitsData:
    """Ten classes of 8x8 images, each a fixed random pattern plus noise: digits-shaped, learnt in two epochs."""
    g = torch.Generator().manual_seed(0)
    patterns = torch.rand(10, 1, 8, 8, generator=g)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 10, (n,), generator=g)
        return (patterns[y] + 0.3 * torch.randn(n, 1, 8, 8, generator=g)).clamp(0, 1), y

    (x_train, y_train), (x_test, y_test) = draw(1200), draw(400)
    return DigitsData(x_train, y_train, x_test, y_test)


@pytest.fixture(scope="module")
def trained(digits: DigitsData) -> torch.nn.Module:
    """The digits CNN trained on the CPU (shared by the module: tests must not change it)."""
    return train_classifier(make_digits_cnn(seed=0), digits, epochs=2, seed=0)


@pytest.fixture()
def on_gpu(trained: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(trained).to(CUDA).eval()


@pytest.fixture()
def ctx(digits: DigitsData) -> RecipeContext:
    train, val = digits.validation_split(0.2)  # every tensor on the CPU
    return RecipeContext(example_input=digits.x_test[:16], train_data=list(batches(train.x_train, train.y_train, 64, shuffle=False)),
                         val_data=(val.x_test, val.y_test), fine_tune_epochs=1, train_epochs=1)


def test_a_gpu_model_is_compared_on_cpu_data_and_its_int8_variant_runs_on_the_cpu_with_a_flag(
        trained: torch.nn.Module, on_gpu: torch.nn.Module, digits: DigitsData) -> None:
    result = compare({"float": on_gpu, "int8": "int8-static", "pruned": "prune:0.5"},
                     (digits.x_test, digits.y_test), repeats=2, min_repeat_s=0.2, progress=False,
                     train_data=list(batches(digits.x_train, digits.y_train, 64, shuffle=False)))
    float_, int8, pruned = result.variants
    assert [v.status for v in result.variants] == ["ok", "ok", "ok"], [v.error for v in result.variants]
    assert [v.details["device"] for v in result.variants] == ["cuda:0", "cpu", "cuda:0"]
    assert int8.details["moved_from"] == "cuda:0"
    assert INT8_ON_CPU.format(device="cuda:0") in int8.flags
    assert any("different devices" in f and "int8 on cpu" in f for f in result.flags)
    # the GPU run scores what the same model scores on the CPU (cuDNN may convolve in TF32: a few images may differ)
    on_cpu = _accuracy(trained, digits.x_test, digits.y_test)
    assert abs(float_.metric - on_cpu) <= 0.01
    assert int8.metric > on_cpu - 0.03 and pruned.metric > on_cpu - 0.05
    assert float_.latency_batch is not None and float_.latency_batch.p50_s > 0
    assert model_device(on_gpu) == CUDA  # the baseline stays where it was


def test_every_measured_step_on_the_gpu_ends_with_a_synchronisation(on_gpu: torch.nn.Module, digits: DigitsData,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    real = torch.cuda.synchronize

    def counting(device: object = None) -> None:
        calls.append(device)
        real(device)

    monkeypatch.setattr(torch.cuda, "synchronize", counting)
    result = compare({"float": on_gpu, "again": copy.deepcopy(on_gpu)}, (digits.x_test, digits.y_test),
                     repeats=2, min_repeat_s=0.05, batch_size=64, progress=False)
    steps = 2 * 2 * result.passes_per_repeat * -(-len(digits.y_test) // 64)  # variants x repeats x passes x batches
    assert sum(1 for d in calls if d == CUDA) >= steps


def test_recipes_that_train_fine_tune_a_gpu_model_from_cpu_batches(on_gpu: torch.nn.Module, ctx: RecipeContext,
                                                                   digits: DigitsData) -> None:
    pruned = build_variant("channels:0.5", on_gpu, ctx)
    assert model_device(pruned) == CUDA
    qat = build_variant("qat", on_gpu, ctx)
    assert model_device(qat) == torch.device("cpu")
    assert qat.compression_info.details["moved_from"] == "cuda:0"
    ticket = build_variant("ticket:0.5", on_gpu, ctx)
    assert model_device(ticket) == CUDA
    exits = build_variant("early-exit:auto", on_gpu, ctx)
    assert model_device(exits) == CUDA
    for model in (pruned, qat, ticket, exits):
        x = digits.x_test.to(model_device(model))
        assert _accuracy(model, x, digits.y_test.to(x.device)) > 0.8
