"""/v1/classify and /v1/qa in-process on 127.0.0.1: answers, task mismatch, bad input, metrics."""

import json

import edge_runtime
import pytest
from test_runtime_http import BAD_INPUT, LIMITS, POST, raw, request, serve  # noqa: F401

pytestmark = pytest.mark.timeout(120)


def post_json(port, path, payload):
    return request(port, "POST", path, json.dumps(payload))


def test_classify_route_matches_in_process(serve, task_bundles):
    service, port = serve(bundle=task_bundles["classify"])
    texts = ["hello world", "the quick brown fox jumps over the lazy dog", "a"]
    status, _, body = post_json(port, "/v1/classify", {"texts": texts})
    assert status == 200 and len(body["results"]) == 3 and body["ms"] > 0
    labels = service.model.meta["labels"]
    expected = edge_runtime.load(task_bundles["classify"], threads=1).classify(texts)
    for got, want in zip(body["results"], expected):
        assert list(got["scores"]) == labels and got["label"] == want["label"]
        assert got["scores"] == pytest.approx(want["scores"], abs=1e-6)
    info = request(port, "GET", "/v1/info")[2]
    assert (info["task"], info["labels"], info["max_seq_len"]) == ("classify", labels, 64)


def test_qa_route_matches_in_process(serve, task_bundles):
    _, port = serve(bundle=task_bundles["qa"])
    question, context = "who sat on the mat?", "a cat sat on the mat and a dog sat by the door"
    status, _, body = post_json(port, "/v1/qa", {"question": question, "context": context})
    want = edge_runtime.load(task_bundles["qa"], threads=1).answer(question, context)
    assert status == 200 and set(body) == {"answer", "score", "start", "end", "ms"}
    assert body["answer"] == context[body["start"]:body["end"]] == want["answer"]
    assert body["score"] == pytest.approx(want["score"], abs=1e-6)
    info = request(port, "GET", "/v1/info")[2]
    assert (info["task"], info["max_answer_len"]) == ("qa", 30) and "labels" not in info


@pytest.mark.parametrize("bundle, route, payload, serves", [
    (None, "/v1/classify", {"texts": ["x"]}, "embed"),
    (None, "/v1/qa", {"question": "q", "context": "c"}, "embed"),
    ("qa", "/v1/embed", {"texts": ["x"]}, "qa"),
    ("qa", "/v1/classify", {"texts": ["x"]}, "qa"),
    ("classify", "/v1/qa", {"question": "q", "context": "c"}, "classify"),
])
def test_route_of_another_task_is_409(serve, task_bundles, bundle, route, payload, serves):
    _, port = serve(bundle=task_bundles[bundle] if bundle else None)
    status, _, body = post_json(port, route, payload)
    assert status == 409 and body["task"] == serves
    own = {"embed": "/v1/embed", "classify": "/v1/classify", "qa": "/v1/qa"}[serves]
    assert f"serves a '{serves}' bundle (POST {own})" in body["error"] and route in body["error"]


def _post(path: bytes, body: bytes) -> bytes:
    return (POST.replace(b"/v1/embed", path) + b"Content-Length: %d\r\n\r\n" % len(body) + body)


QA_BAD_INPUT = [  # (name, body, status, words in the error)
    ("not json", b"{not json", 400, "not valid JSON"),
    ("invalid utf-8", b'{"question":"\xff","context":"c"}', 400, "UTF-8"),
    ("a list", b'["q", "c"]', 400, "expected"),
    ("no context", b'{"question":"q"}', 400, "expected"),
    ("question a number", b'{"question":1,"context":"c"}', 400, "expected"),
    ("texts instead", b'{"texts":["q"]}', 400, "expected"),
    ("empty question", b'{"question":" ","context":"c"}', 400, "must not be empty"),
    ("empty context", b'{"question":"q","context":""}', 400, "must not be empty"),
    ("lone surrogate", b'{"question":"\\ud800","context":"c"}', 400, "surrogate"),
    ("question too long", b'{"question":"' + b"q" * 51 + b'","context":"c"}', 413,
     "question is longer than 50"),
    ("context too long", b'{"question":"q","context":"' + b"c" * 60 + b'"}', 413,
     "context is longer than 50"),
    ("deep nesting", b"[" * 3000, 400, "not valid JSON"),
]


@pytest.mark.parametrize("route", ["/v1/classify", "/v1/qa"])
def test_bad_input_per_route_then_still_serving(serve, task_bundles, route):
    task = route.rsplit("/", 1)[1]
    _, port = serve(bundle=task_bundles[task], **LIMITS)
    cases = [(name, data.replace(b"/v1/embed", route.encode()), status, words)
             for name, data, status, words in BAD_INPUT if data.startswith(POST)]
    if route == "/v1/qa":
        framing = ("body too large", "no length", "length not a number")
        cases = [case for case in cases if case[0] in framing]  # the rest are texts bodies
        cases += [(name, _post(b"/v1/qa", body), status, words)
                  for name, body, status, words in QA_BAD_INPUT]
    for name, data, status, words in cases:
        got, headers, body = raw(port, data)
        assert (got, headers["content-type"]) == (status, "application/json"), (name, body)
        assert words.lower() in body["error"].lower(), (name, body)
    ok = {"texts": ["fine"]} if task == "classify" else {"question": "q", "context": "a cat"}
    assert post_json(port, route, ok)[0] == 200
    metrics = request(port, "GET", "/metrics")[2]
    assert f'edge_requests_total{{method="POST",route="{route}",status="200"}} 1' in metrics
    assert f'route="{route}",status="413"' in metrics and f'route="{route}",status="400"' in metrics
    assert f'edge_request_seconds_count{{route="{route}"}} {len(cases) + 1}' in metrics


def test_qa_question_that_fills_max_seq_len_is_400(serve, task_bundles):
    _, port = serve(bundle=task_bundles["qa"])
    question = " ".join(["what"] * 80)  # 80 tokens, the bundle holds 64
    status, _, body = post_json(port, "/v1/qa", {"question": question, "context": "a cat"})
    assert status == 400 and "cannot fit the input into 64 tokens" in body["error"]
    long_context = " ".join(["the cat sat on the mat"] * 40)
    status, _, body = post_json(port, "/v1/qa", {"question": "who?", "context": long_context})
    assert status == 200 and body["end"] < len(long_context)  # the context was cut, not refused
