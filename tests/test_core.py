"""Core types, pipeline, config and the lazy-import guarantee."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import ClassVar

import pytest
from pydantic import Field, ValidationError

import ctxkit
from ctxkit import BaseStage, ConfigError, ContextState, InputError, Passage, Pipeline
from ctxkit.config import build_stage, load_pipeline, register_stage


class ToyRetriever(BaseStage):
    """Returns ``k`` passages whose score is their index."""

    stage_type: ClassVar[str] = "toy_retriever"
    k: int = Field(5, gt=0)
    prefix: str = "p"

    def run(self, states):
        for s in states:
            s.passages = [Passage(id=f"{self.prefix}{i}", text=f"{s.query} {i}") for i in range(self.k)]
            for i, p in enumerate(s.passages):
                self.set_score(p, float(i))
        return states


class ToyReverse(BaseStage):
    """Keeps the top ``k`` by last score, highest first; counts batch sizes it saw."""

    k: int = Field(3, gt=0)
    seen_batches: ClassVar[list[int]] = []

    def run(self, states):
        ToyReverse.seen_batches.append(len(states))
        for s in states:
            s.passages = sorted(s.passages, key=lambda p: -p.score)[: self.k]
            for p in s.passages:
                self.set_score(p, p.score * 10)
        return states


class Wrapper(BaseStage):
    nested_stage_fields: ClassVar[tuple[str, ...]] = ("inner",)
    inner: list[BaseStage]

    def run(self, states):
        for st in self.inner:
            states = st(states)
        return states


register_stage("toy_retriever", ToyRetriever)
register_stage("toy_reverse", ToyReverse)
register_stage("toy_wrapper", Wrapper)


def test_pipeline_keeps_every_stage_score_and_traces_counts():
    pipe = Pipeline([ToyRetriever(k=5), ToyReverse(k=3)])
    state = pipe.run("q")
    assert [p.id for p in state.passages] == ["p4", "p3", "p2"]
    assert state.passages[0].scores == {"toy_retriever": 4.0, "toy_reverse": 40.0}
    assert state.passages[0].score == 40.0
    assert [(r.stage, r.n_in, r.n_out) for r in state.trace.stages] == [
        ("toy_retriever", 0, 5),
        ("toy_reverse", 5, 3),
    ]
    assert all(r.seconds >= 0 for r in state.trace.stages)


def test_batch_is_processed_by_each_stage_at_once_and_in_chunks():
    ToyReverse.seen_batches.clear()
    pipe = Pipeline([ToyRetriever(), ToyReverse()])
    states = pipe.batch(["a", "b", "c"])
    assert [s.query for s in states] == ["a", "b", "c"]
    assert ToyReverse.seen_batches == [3]
    ToyReverse.seen_batches.clear()
    Pipeline([ToyRetriever(), ToyReverse()], batch_size=2).batch(["a", "b", "c"])
    assert ToyReverse.seen_batches == [2, 1]


def test_async_path_matches_sync():
    pipe = Pipeline([ToyRetriever(k=4), ToyReverse(k=2)])
    a = asyncio.run(pipe.abatch(["x", "y"]))
    b = pipe.batch(["x", "y"])
    assert [[p.model_dump() for p in s.passages] for s in a] == [[p.model_dump() for p in s.passages] for s in b]


def test_empty_query_and_bad_input_are_rejected():
    pipe = Pipeline([ToyRetriever()])
    with pytest.raises(InputError, match="empty"):
        pipe.run("   ")
    with pytest.raises(InputError):
        pipe.batch([42])  # type: ignore[list-item]


def test_settings_are_validated_with_stage_and_field_in_message():
    with pytest.raises(ConfigError, match=r"ToyRetriever.*'k'.*greater than 0"):
        ToyRetriever(k=0)
    with pytest.raises(ConfigError, match=r"unknown field 'kk'"):
        ToyRetriever(kk=3)
    with pytest.raises(ConfigError, match="toy_retriever"):
        build_stage({"type": "toy_retriever", "k": "many"})
    with pytest.raises(ConfigError, match="unknown stage type 'nope'"):
        build_stage({"type": "nope"})
    with pytest.raises(ConfigError, match="no 'type'"):
        build_stage({"k": 3})


def test_config_round_trip_yaml(tmp_path):
    pipe = Pipeline([ToyRetriever(k=7, prefix="x"), ToyReverse(k=2, name="rev")], batch_size=4)
    cfg = pipe.to_config()
    assert cfg["stages"][0] == {"type": "toy_retriever", "k": 7, "prefix": "x"}
    rebuilt = load_pipeline(cfg)
    assert rebuilt.to_config() == cfg
    path = tmp_path / "pipe.yaml"
    pipe.save(str(path))
    from_file = load_pipeline(str(path))
    assert from_file.to_config() == cfg
    assert [p.id for p in from_file.run("q").passages] == ["x6", "x5"]


def test_nested_stages_build_from_config():
    cfg = {"stages": [{"type": "toy_wrapper", "inner": [{"type": "toy_retriever", "k": 3}, {"type": "toy_reverse", "k": 1}]}]}
    pipe = load_pipeline(cfg)
    full = pipe.to_config()
    assert full["stages"][0]["inner"][0] == {"type": "toy_retriever", "k": 3, "prefix": "p"}
    assert load_pipeline(full).to_config() == full
    assert [p.id for p in pipe.run("q").passages] == ["p2"]


def test_bad_pipeline_configs(tmp_path):
    with pytest.raises(ConfigError, match="stages"):
        load_pipeline({"stage": []})
    with pytest.raises(ConfigError, match="unknown pipeline keys"):
        load_pipeline({"stages": [], "extra": 1})
    with pytest.raises(ConfigError, match="does not exist"):
        load_pipeline(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="import path|cannot import"):
        build_stage({"type": "no.such.module:Thing"})


def test_entry_point_stage_is_found(monkeypatch):
    from importlib.metadata import EntryPoint

    from ctxkit import registry

    ep = EntryPoint(name="plugin_toy", value=f"{__name__}:ToyRetriever", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "_entry_points", lambda: {"plugin_toy": ep})
    stage = build_stage({"type": "plugin_toy", "k": 2})
    assert isinstance(stage, ToyRetriever) and stage.k == 2


def test_duplicate_stage_names_are_made_unique():
    pipe = Pipeline([ToyRetriever(), ToyReverse(), ToyReverse()])
    assert [s.name for s in pipe.stages] == ["toy_retriever", "toy_reverse", "toy_reverse_2"]
    assert pipe["toy_reverse_2"] is pipe.stages[2]


def test_state_models_are_strict():
    with pytest.raises(ValidationError):
        ContextState(query="q", unknown=1)
    s = ContextState(query="q")
    s.trace.count("parse_failures")
    s.trace.count("parse_failures", 2)
    assert s.trace.counters == {"parse_failures": 3}
    assert len(s.trace.list_id) == 32


def test_public_api_all_is_complete():
    for name in ctxkit.__all__:
        assert getattr(ctxkit, name) is not None


def test_import_ctxkit_is_light():
    code = (
        "import sys, ctxkit, ctxkit.pipeline, ctxkit.config, ctxkit.registry, ctxkit.cli, ctxkit.types, ctxkit.models, ctxkit.retrievers,"
        " ctxkit.rankers, ctxkit.faithfulness, ctxkit.llm, ctxkit.integrations;"
        "ctxkit.Pipeline; ctxkit.load_pipeline;"
        "heavy=[m for m in ('torch','transformers','chromadb','langchain_core','llama_index','sentence_transformers','bm25s') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
