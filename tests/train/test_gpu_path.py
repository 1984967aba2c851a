"""The CUDA-only paths, reached on a CPU with CUDA's answers faked: each process's own GPU, the
4-bit load's placement, the refusals of a pre-Ampere card, DDP's unused-parameter search, the
fused optimizer, and the end of a multi-process run."""

from __future__ import annotations

import importlib.util
import json
from types import SimpleNamespace

import pytest
import torch

from phi3v.data.records import read_records
from phi3v.errors import UserError
from phi3v.modeling_phi3v import Phi3VForCausalLM
from phi3v.training import devices, optimizer
from phi3v.training import train as train_module
from phi3v.training.data_order import collate_for
from phi3v.training.distributed import ddp_finds_unused_parameters
from phi3v.training.loop import FitResult
from phi3v.training.model_setup import build_model, check_run, load_model

from .conftest import DATASET, base_run


@pytest.fixture
def eight_gpus(monkeypatch):
    """torch.cuda as on a node with 8 GPUs; records which device each call made current."""
    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    return current


@pytest.mark.parametrize("local_rank", ["0", "5"])
def test_each_process_takes_the_gpu_of_its_local_rank(monkeypatch, eight_gpus, local_rank):
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    assert devices.local_device() == torch.device("cuda", int(local_rank))
    assert eight_gpus == [int(local_rank)]  # made current before anything allocates


def test_a_process_without_a_gpu_of_its_own_is_refused(monkeypatch, eight_gpus):
    monkeypatch.setenv("LOCAL_RANK", "8")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7")
    with pytest.raises(UserError, match="LOCAL_RANK=8 has no GPU of its own: 8 visible"):
        devices.local_device()


def test_without_cuda_every_process_computes_on_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert devices.local_device() == torch.device("cpu")


@pytest.fixture
def loaded(monkeypatch):
    """Phi3VForCausalLM.from_pretrained replaced by a recorder of its keyword arguments."""
    calls = []
    monkeypatch.setattr(Phi3VForCausalLM, "from_pretrained", classmethod(lambda cls, path, **kw: calls.append(kw)))
    return calls


def test_qlora_loads_the_4bit_model_onto_the_gpu_of_its_local_rank(monkeypatch, eight_gpus, loaded):
    monkeypatch.setenv("LOCAL_RANK", "3")
    run = base_run(strategy="qlora", lora_rank=4, lora_alpha=8)
    load_model(run, "base")  # the device of this process by default
    load_model(run, "base", torch.device("cuda", 6))
    assert [kw["device_map"] for kw in loaded] == [{"": 3}, {"": 6}]
    assert all(kw["quantization_config"].load_in_4bit for kw in loaded)


def test_full_weights_load_straight_to_the_gpu_and_stay_put_on_a_cpu(loaded):
    load_model(base_run(), "base", torch.device("cuda", 2))
    load_model(base_run(), "base", torch.device("cpu"))
    assert loaded[0]["device_map"] == {"": 2} and "device_map" not in loaded[1]


@pytest.fixture
def v100(monkeypatch):
    """A Tesla V100 (sm70): bf16 only emulated, no flash-attn kernels; flash-attn installed."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-32GB")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "flash_attn" else real(name, *a))
    monkeypatch.setattr("transformers.utils.is_flash_attn_2_available", lambda: True)


def test_bf16_on_a_v100_is_refused_up_front(v100):
    with pytest.raises(UserError, match=r"V100.*compute capability 7\.0.*no native bf16 — use precision fp16"):
        check_run(base_run(precision="bf16", attention="sdpa"), torch.device("cuda", 0))


def test_flash_attention_on_a_v100_is_refused_up_front(v100):
    with pytest.raises(UserError, match=r"flash_attention_2 needs compute capability 8\.0.*V100.*has compute "
                                        r"capability 7\.0 — use attention sdpa or eager"):
        check_run(base_run(precision="bf16", attention="flash_attention_2"), torch.device("cuda", 0))


def test_an_ampere_card_passes_both_checks(v100, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    check_run(base_run(precision="bf16", attention="flash_attention_2"), torch.device("cuda", 0))


def test_adamw_is_fused_on_cuda_and_foreach_elsewhere():
    on_gpu = [SimpleNamespace(is_cuda=True)] * 2
    assert optimizer.adamw_kernel(on_gpu) == {"fused": True}
    assert optimizer.adamw_kernel([torch.nn.Parameter(torch.ones(2))]) == {}  # CPU demo: bits unchanged
    adamw = optimizer.make_optimizer(torch.nn.Linear(2, 2), base_run())
    assert adamw.defaults["fused"] is None and adamw.defaults["foreach"] is None


def write_records(folder, with_images: list[bool]):
    lines = [{"id": f"train-{i:010d}", "source": DATASET, "conversations": [
        {"images": ["0.png"] if has else [], "user": "What colour is it?", "assistant": "red"}]}
        for i, has in enumerate(with_images)]
    (folder / f"{DATASET}_train.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return SimpleNamespace(records=read_records(folder / f"{DATASET}_train.jsonl"))


@pytest.mark.parametrize("strategy_name, image_less_sample, searches", [
    ("full", False, False),            # every parameter gets a gradient every step
    ("full", True, True),              # a text-only micro-batch leaves CLIP without gradient
    ("lora", True, True),              # CLIP's adapters likewise
    ("frozen_vision", True, False),    # nothing of the vision tower trains
])
def test_ddp_searches_for_unused_parameters_only_when_a_batch_can_leave_some_out(
        tmp_path, tiny_base, strategy_name, image_less_sample, searches):
    rank = dict(lora_rank=4, lora_alpha=8) if strategy_name == "lora" else {}
    model = build_model(base_run(strategy=strategy_name, **rank), str(tiny_base), torch.device("cpu"))
    dataset = write_records(tmp_path, [True, not image_less_sample, True])
    assert ddp_finds_unused_parameters(model, dataset) is searches


def test_the_process_group_ends_before_the_main_process_writes_the_outputs(monkeypatch, tmp_path):
    # a LoRA merge of the full model takes minutes; no process may wait in a barrier meanwhile
    events = []
    accelerator = SimpleNamespace(is_main_process=True, unwrap_model=lambda model: model,
                                  end_training=lambda: events.append("end_training"),
                                  wait_for_everyone=lambda: events.append("barrier"))
    result = FitResult(model="model", accelerator=accelerator, log=[], metrics={"m": 1}, timed=None, run=base_run())
    monkeypatch.setattr(train_module, "fit", lambda run, **kw: result)
    monkeypatch.setattr(train_module, "write_outputs", lambda model, run, **kw: events.append("write_outputs"))
    assert train_module.train(base_run(), base_model=tmp_path, data_dir=tmp_path, dataset_name=DATASET,
                              out_dir=tmp_path, checkpoint_dir=tmp_path) == {"m": 1}
    assert events == ["end_training", "write_outputs"]


def text_examples(lengths):
    return [{"input_ids": list(range(5, 5 + n)), "labels": list(range(5, 5 + n))} for n in lengths]


def test_packed_batches_carry_the_flash_kernels_sample_boundaries_only_under_flash_attention():
    flash = collate_for(base_run(attention="flash_attention_2", packing=True), pad_token_id=0)
    batch = flash(text_examples([3, 5, 2]))
    assert batch["cu_seq_lens_q"].tolist() == batch["cu_seq_lens_k"].tolist() == [0, 3, 8, 10]
    assert batch["cu_seq_lens_q"].dtype == torch.int32
    assert batch["max_length_q"] == batch["max_length_k"] == 5 and isinstance(batch["max_length_q"], int)
    sdpa = collate_for(base_run(attention="sdpa", packing=True), pad_token_id=0)
    assert not {"cu_seq_lens_q", "max_length_q"} & set(sdpa(text_examples([3, 5, 2])))
    moved = devices.to_device(batch, torch.device("cpu"))  # plain ints pass through
    assert moved["max_length_k"] == 5


def test_a_batch_moves_with_its_floating_tensors_cast_and_the_rest_as_they_are():
    batch = {"input_ids": torch.tensor([[1, 2]]), "pixel_values": torch.ones(1, 3, 2, 2), "image_sizes": None,
             "max_length_q": 2}
    moved = devices.to_device(batch, torch.device("cpu"), torch.bfloat16)
    assert moved["pixel_values"].dtype == torch.bfloat16 and moved["input_ids"].dtype == torch.long
    assert "image_sizes" not in moved and moved["max_length_q"] == 2  # None entries go, plain values stay
    assert devices.to_device(batch, torch.device("cpu"))["pixel_values"].dtype == torch.float32


def test_the_sample_boundaries_reach_every_language_model_attention_layer(monkeypatch):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from phi3v.configuration_phi3v import Phi3VConfig

    config = Phi3VConfig.tiny(vocab_size=64)
    model = Phi3VForCausalLM.random_init(config)
    seen = []
    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]

    def recording(module, *args, **kwargs):
        seen.append((type(module).__name__, kwargs.get("cu_seq_lens_q"), kwargs.get("max_length_q")))
        return sdpa(module, *args, **kwargs)

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "sdpa", recording)
    batch = collate_for(base_run(attention="flash_attention_2", packing=True), 0)(text_examples([3, 5]))
    model(**devices.to_device(batch, torch.device("cpu")))
    language = [entry for entry in seen if entry[0] == "Phi3Attention"]
    assert len(language) == config.num_hidden_layers
    assert all(cu.tolist() == [0, 3, 8] and longest == 5 for _, cu, longest in language)
