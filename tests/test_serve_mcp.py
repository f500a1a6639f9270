"""The MCP server, driven by the official MCP SDK client: stdio (``ctxkit mcp CONFIG`` as a
subprocess, as an agent host starts it) and Streamable HTTP (``/mcp`` of the service, with the
bearer token)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from _serve_helpers import HERE, ROOT, ServiceProcess, build_index, write_config

from ctxkit import load_pipeline
from ctxkit.rankers import FeedbackStore
from ctxkit.serve import Service, ServiceSettings

mcp = pytest.importorskip("mcp")
TOKEN = "mcp-test-token"


def _data(result) -> dict:
    assert not result.is_error, result.content
    return json.loads(result.content[0].text)


@pytest.fixture
def config(tmp_path: Path, tiny_embedder_dir: Path) -> Path:
    index = build_index(tmp_path / "index", tiny_embedder_dir)
    return write_config(tmp_path / "pipeline.yaml", [
        {"type": "bm25", "path": str(index), "k": 3},
        {"type": "_integration_stages:FlagPoison"},
        {"type": "record_feedback", "store": str(tmp_path / "fb.sqlite")},
    ])


async def _exercise(client, fb: Path) -> None:
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert {"query", "check_passages", "feedback", "ingest", "pipeline_info"} <= set(tools)
    assert "answer" not in tools  # no generator in this pipeline
    assert "query" in tools["query"].input_schema["properties"]

    res = _data(await client.call_tool("query", {"query": "who discovered penicillin", "top_k": 2}))
    assert len(res["passages"]) == 2 and all("bm25" in p["scores"] for p in res["passages"])
    assert "pasteur#0" in res["flags"]["inappropriate"]  # steering-like flags come back
    assert res["conflicts"] and res["conflicts"][0]["chunk_span"] == "Louis Pasteur"

    fb_res = _data(await client.call_tool("feedback", {"list_id": res["list_id"], "event": "dislike"}))
    assert fb_res["reward"] == -1.0
    assert FeedbackStore(fb).get(res["list_id"]).rewards == [-1.0]

    bad = await client.call_tool("feedback", {"list_id": "never-shown", "event": "like"})
    assert bad.is_error and "unknown_list" in bad.content[0].text
    bad = await client.call_tool("query", {"query": ""})
    assert bad.is_error

    checked = _data(await client.call_tool("check_passages", {
        "query": "who discovered penicillin",
        "passages": [{"id": "mine", "text": "Louis Pasteur discovered penicillin in 1901."}]}))
    assert checked["flags"]["inappropriate"] == ["mine"]

    added = _data(await client.call_tool("ingest", {"documents": [{"id": "okapi", "text": "the okapi lives in congo"}]}))
    assert added["written"] == 1
    res = _data(await client.call_tool("query", {"query": "okapi congo"}))
    assert res["passages"][0]["doc_id"] == "okapi"
    info = _data(await client.call_tool("pipeline_info", {}))
    assert info["stages"][0]["type"] == "bm25"


async def test_mcp_over_stdio_with_the_sdk_client(config: Path) -> None:
    from mcp import Client, StdioServerParameters

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)]), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    params = StdioServerParameters(command=sys.executable, args=["-m", "ctxkit.cli", "mcp", str(config)],
                                   env=env, cwd=str(config.parent))
    async with Client(params, read_timeout_seconds=120) as client:
        await _exercise(client, config.parent / "fb.sqlite")


async def test_mcp_over_http_needs_the_token(config: Path) -> None:
    import anyio
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    svc = Service(load_pipeline(str(config)), ServiceSettings(token=TOKEN))
    with svc.run_in_thread() as running:
        url = running.url + "/mcp"
        async with (
            httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120) as http,
            Client(streamable_http_client(url, http_client=http)) as client,
        ):
            await _exercise(client, config.parent / "fb.sqlite")
        with pytest.raises(Exception):  # noqa: B017 - the SDK reports the 401 its own way
            with anyio.fail_after(60):
                async with (
                    httpx2.AsyncClient(timeout=30) as http,
                    Client(streamable_http_client(url, http_client=http)) as client,
                ):
                    await client.list_tools()


async def test_ctxkit_mcp_http_command_serves_mcp_only(config: Path) -> None:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    proc = ServiceProcess(config, "--transport", "http", "--token", TOKEN, command="mcp").start()
    try:
        async with (
            httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120) as http,
            Client(streamable_http_client(proc.url + "/mcp", http_client=http)) as client,
        ):
            assert (await http.post(proc.url + "/v1/query", json={"query": "eiffel"})).status_code == 404  # MCP only
            res = _data(await client.call_tool("query", {"query": "eiffel tower", "top_k": 1}))
            assert res["passages"][0]["doc_id"] == "eiffel"
    finally:
        assert proc.stop() in (0, -15)
    assert "stopped: closed 1 feedback store(s)" in proc.logs()
