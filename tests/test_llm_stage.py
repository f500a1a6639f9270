"""The ``generate`` stage with a real tiny transformers model."""

from __future__ import annotations

import asyncio

import pytest

from ctxkit import ConfigError, ContextState, Passage, Pipeline, load_pipeline
from ctxkit.llm import GenerateAnswer
from ctxkit.llm.transformers import TransformersGenerator


class CountingGenerator(TransformersGenerator):
    """The real tiny generator, recording the batch sizes it was called with."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.calls: list[int] = []

    def generate(self, batch, settings=None, **kw):
        self.calls.append(len(batch))
        return super().generate(batch, settings, **kw)


def _states():
    return [
        ContextState(query="when was the tower completed", passages=[
            Passage(id="a", text="the eiffel tower was completed in 1889", metadata={"title": "Eiffel"}),
            Passage(id="b", text="in paris"),
        ]),
        ContextState(query="who discovered penicillin", passages=[Passage(id="c", text="alexander fleming")]),
        ContextState(query="what", passages=[]),
    ]


def test_generates_for_the_whole_batch_in_one_call(tiny_llm_dir):
    gen = CountingGenerator(str(tiny_llm_dir), device="cpu")
    stage = GenerateAnswer(generator=gen, sampling={"max_new_tokens": 5})
    states = Pipeline([stage]).batch(_states())
    assert gen.calls == [3]
    assert all(isinstance(s.answer, str) for s in states)
    assert states[0].prompt.count("[1] the eiffel tower") == 1 and "[2] in paris" in states[0].prompt
    assert "<context>" in states[0].prompt and states[0].prompt.endswith("Question: when was the tower completed\nAnswer:")
    expected = gen.generate([[{"role": "user", "content": states[1].prompt}]], max_new_tokens=5)[0].text
    assert states[1].answer == expected
    assert states[0].trace.counters["generated_tokens"] == 5


def test_prompt_options(tiny_llm_dir):
    gen = TransformersGenerator(str(tiny_llm_dir), device="cpu")
    stage = GenerateAnswer(
        generator=gen, template="Q: {question}\nPassages ({n}):\n<context>{context}</context>",
        passage_format="{i}. {title}: {text}", passage_separator=" | ", max_passages=1, system="be brief",
        sampling={"max_new_tokens": 2},
    )
    msgs = stage.build_messages(_states()[0])
    assert [m.role for m in msgs] == ["system", "user"]
    assert msgs[1].content == "Q: when was the tower completed\nPassages (1):\n<context>1. Eiffel: the eiffel tower was completed in 1889</context>"


def test_errors_are_recorded_per_state_and_the_batch_goes_on(tiny_llm_dir):
    gen = TransformersGenerator(str(tiny_llm_dir), device="cpu", max_input_tokens=60)
    stage = GenerateAnswer(generator=gen, template="{question} <context>{context}</context>", sampling={"max_new_tokens": 3})
    states = _states()
    states[1].query = "what who when where " * 30  # the question alone does not fit
    out = stage(states)
    assert out[0].answer is not None and out[2].answer is not None
    assert out[1].answer is None and out[1].trace.counters["generation_errors"] == 1
    assert "prompt too long" in out[1].trace.errors[0] and out[1].trace.errors[0].startswith("generate:")


def test_spec_round_trips_through_config(tiny_llm_dir):
    spec = {"backend": "transformers", "model": str(tiny_llm_dir), "device": "cpu"}
    pipe = load_pipeline({"stages": [{"type": "generate", "generator": spec, "sampling": {"max_new_tokens": 3}}]})
    cfg = pipe.to_config()
    assert cfg["stages"][0]["generator"] == spec and cfg["stages"][0]["sampling"] == {"max_new_tokens": 3}
    assert load_pipeline(cfg).to_config() == cfg
    st = pipe.run(_states()[1])
    assert st.answer is not None
    # an object with to_spec is written as its spec
    obj = GenerateAnswer(generator=TransformersGenerator(str(tiny_llm_dir), device="cpu"))
    assert obj.to_config()["generator"] == spec


def test_async_run_matches_sync(tiny_llm_dir):
    gen = TransformersGenerator(str(tiny_llm_dir), device="cpu")
    stage = GenerateAnswer(generator=gen, sampling={"max_new_tokens": 4})
    sync = [s.answer for s in stage(_states())]
    asyn = [s.answer for s in asyncio.run(Pipeline([stage]).abatch(_states()))]
    assert sync == asyn


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"template": "no placeholders"}, "placeholders"),
        ({"template": "{question} {context} {oops}"}, "unknown placeholders"),
        ({"passage_format": "{i} {body}"}, "passage_format"),
        ({"generator": {"backend": "nope"}}, "backend"),
        ({"generator": 42}, "generator"),
        ({"sampling": {"temperature": -1}}, "temperature"),
        ({"max_passages": -1}, "max_passages"),
    ],
)
def test_invalid_settings_raise_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        GenerateAnswer(**kwargs)


def test_non_serialisable_generator_says_what_to_do():
    class Custom:
        def generate(self, batch, settings=None):
            return []

    with pytest.raises(ConfigError, match="spec dict"):
        GenerateAnswer(generator=Custom()).to_config()


def test_generator_answer_convenience(tiny_llm_dir):
    gen = TransformersGenerator(str(tiny_llm_dir), device="cpu")
    one = _states()[0]
    ans = gen.answer(one, sampling={"max_new_tokens": 3})
    assert isinstance(ans, str) and one.answer == ans and "<context>" in one.prompt
    many = gen.answer(_states(), sampling={"max_new_tokens": 3}, max_passages=1)
    assert len(many) == 3 and all(isinstance(a, str) for a in many)


def test_public_api_resolves_lazily():
    from ctxkit import llm

    for name in llm.__all__:
        assert getattr(llm, name) is not None, name
    assert sorted(llm.__all__) == dir(llm)


def test_stage_sampling_overrides_only_the_fields_it_sets(tiny_llm_dir):
    gen = TransformersGenerator(str(tiny_llm_dir), device="cpu", settings={"max_new_tokens": 2})
    forced = []

    class Record:
        def __call__(self, input_ids, scores):
            forced.append(input_ids.shape[1])
            return scores

    gen.logits_processors = [Record()]
    stage = GenerateAnswer(generator=gen, sampling={"stop": ["zzz"]})
    out = stage(_states()[:1])
    assert out[0].answer is not None and len(forced) <= 2  # max_new_tokens=2 kept from the generator
    assert stage.to_config()["sampling"] == {"stop": ["zzz"]}
