"""CUDA checks (skipped without a GPU; CI has none). Run on a GPU machine with
``python -m pytest -q tests/test_gpu.py``: half precision on CUDA, results agree with CPU."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_auto_device_and_half_precision():
    from ctxkit.models import resolve_device, resolve_dtype

    assert resolve_device("auto") == "cuda"
    assert resolve_dtype("cuda") in (torch.bfloat16, torch.float16)


def test_embedder_on_cuda_matches_cpu():
    from ctxkit.models import Embedder

    texts = ["penicillin was discovered by Alexander Fleming", "the Eiffel Tower is in Paris"] * 8
    gpu = Embedder("default", device="cuda").encode(texts)
    cpu = Embedder("default", device="cpu").encode(texts)
    cos = (gpu * cpu).sum(1)
    assert cos.min() > 0.995


def test_generator_batch_equals_single_on_cuda(tiny_llm_dir):
    from ctxkit.llm import TransformersGenerator
    from ctxkit.llm.base import as_messages

    gen = TransformersGenerator(str(tiny_llm_dir), device="cuda", dtype="float32", batch_size=4)
    prompts = ["who discovered penicillin", "the eiffel tower was completed in", "what is 1 2 3"]
    batch = gen.generate([as_messages(p) for p in prompts], max_new_tokens=8)
    single = [gen.generate([as_messages(p)], max_new_tokens=8)[0] for p in prompts]
    assert [g.text for g in batch] == [g.text for g in single]
    assert all(g.ok for g in batch)


def test_caad_on_cuda_matches_cpu(tiny_llm_dir):
    from ctxkit.faithfulness.decoding import CAADLogitsProcessor, GroundingSpace
    from ctxkit.llm import TransformersGenerator
    from ctxkit.llm.base import as_messages

    examples = [("who discovered penicillin", "alexander fleming in 1928"),
                ("when was the eiffel tower completed", "it was completed in 1889 in paris")]
    outs = {}
    for device in ("cpu", "cuda"):
        gen = TransformersGenerator(str(tiny_llm_dir), device=device, dtype="float32")
        space = GroundingSpace.from_generator(gen, examples)
        proc = CAADLogitsProcessor.for_generator(space, gen, alpha=5.0, tau=0.0)
        res = gen.generate([as_messages(q) for q, _ in examples], max_new_tokens=10, logits_processors=[proc])
        outs[device] = [g.text for g in res]
        assert proc.stats.steps_with_match > 0
    assert outs["cpu"] == outs["cuda"]
