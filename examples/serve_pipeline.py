"""Serve a pipeline over HTTP and call it like any client would (offline, loopback only).

Builds a small index, starts the ctxkit service on a free port (the same thing as
``ctxkit serve-pipeline pipeline.yaml --token ...``), then, with nothing but the standard
library's HTTP client: sends concurrent queries (they are batched together), records feedback,
ingests a new document and finds it, and shows a refused request without the token.

    python examples/serve_pipeline.py
"""

from __future__ import annotations

import json
import tempfile
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ctxkit.retrievers import ingest
from ctxkit.serve import Service, ServiceSettings

TOKEN = "example-token-123"
DOCS = [
    {"id": "fleming", "text": "Penicillin was discovered by Alexander Fleming in 1928 at St Mary's Hospital."},
    {"id": "pasteur", "text": "Penicillin was discovered by Louis Pasteur in 1901.", "metadata": {"source": "forum"}},
    {"id": "eiffel", "text": "The Eiffel Tower was completed in 1889 for the World's Fair in Paris."},
    {"id": "curie", "text": "Marie Curie discovered polonium and radium with Pierre Curie."},
    {"id": "apollo", "text": "Apollo 11 landed on the Moon in 1969."},
]


def post(url: str, body: dict, token: str | None = TOKEN) -> tuple[int, dict]:
    """POST JSON, return (status, JSON body): errors are JSON too."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="ctxkit-serve-example-"))
    ingest(DOCS, index=str(work / "index"))
    config = {"stages": [
        {"type": "hybrid", "k": 3, "retrievers": [{"type": "chroma", "path": str(work / "index")},
                                                  {"type": "bm25", "path": str(work / "index")}]},
        {"type": "record_feedback", "store": str(work / "feedback.sqlite")},
    ]}
    settings = ServiceSettings(token=TOKEN, batch_window_ms=20)
    with Service.from_config(config, settings).run_in_thread() as running:
        print(f"service at {running.url}")
        questions = ["Who discovered penicillin?", "When was the Eiffel Tower completed?",
                     "What did Marie Curie discover?", "When did Apollo 11 land?"]
        with ThreadPoolExecutor(len(questions)) as pool:  # concurrent clients: batched by the service
            answers = list(pool.map(lambda q: post(f"{running.url}/v1/query", {"query": q}), questions))
        for q, (status, body) in zip(questions, answers, strict=True):
            res = body["results"][0]
            top = res["passages"][0]
            batch = res["trace"]["stages"][0]["info"]["batch_size"]
            print(f"{status} {q!r} -> {top['id']} {top['scores']} (ran in a batch of {batch})")
        first = answers[0][1]["results"][0]
        status, body = post(f"{running.url}/v1/feedback", {"list_id": first["list_id"], "event": "like"})
        print(f"feedback: {status} {body}")
        status, body = post(f"{running.url}/v1/ingest", {"documents": [
            {"id": "okapi", "text": "The okapi is a giraffe relative that lives in the Congo rainforest."}]})
        print(f"ingest: {status} written={body['written']}")
        status, body = post(f"{running.url}/v1/query", {"query": "Where does the okapi live?", "top_k": 1})
        print(f"new document found: {body['results'][0]['passages'][0]['id']}")
        status, body = post(f"{running.url}/v1/query", {"query": "no token"}, token=None)
        print(f"without the token: {status} {body['error']['code']}")
        assert status == 401
    print("serve_pipeline: ok")


if __name__ == "__main__":
    main()
