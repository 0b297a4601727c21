"""Vision-free class descriptions: the chat client against a fake local OpenAI-compatible server."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tgmae.captions.describe import ChatClient, ChatEndpointError, describe_classes, read_class_list
from tgmae.captions.sources import CUPL_PROMPTS, DescriptionsError, load_descriptions


def main(argv: list[str]) -> int:
    """`tgmae describe-classes ARGV` through the command line's error boundary (bad input: exit 2)."""
    from tgmae.cli import main as cli_main

    return cli_main(["describe-classes", *argv])


class FakeChat:
    """A local /v1/chat/completions that answers from a script of (status, body | None, delay)."""

    def __init__(self):
        self.requests: list[dict] = []
        self.script: list[tuple[int, object, float]] = []  # consumed first; then echo answers
        self.fail_for: set[str] = set()  # prompts containing these words get HTTP 400
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                status, payload, delay = owner.script.pop(0) if owner.script else (200, None, 0.0)
                prompt = body["messages"][-1]["content"]
                if any(w in prompt for w in owner.fail_for):
                    status, payload = 400, {"error": {"message": "bad model"}}
                time.sleep(delay)
                if payload is None:
                    payload = {"choices": [{"message": {"role": "assistant",
                                                        "content": f' "Answer {len(owner.requests)} to: {prompt}" '}}]}
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake():
    with FakeChat() as f:
        yield f


def client(fake, **kw):
    kw.setdefault("retries", 3)
    return ChatClient(fake.base_url, "fake-gpt", api_key="sk-test", backoff=0.01, **kw)


def test_request_shape_auth_and_answer_cleanup(fake):
    text = client(fake).complete("Describe the action jumping.")
    assert text == "Answer 1 to: Describe the action jumping."  # quotes and spaces stripped
    req = fake.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
    assert req["body"]["model"] == "fake-gpt" and req["body"]["messages"][-1]["role"] == "user"
    no_key = ChatClient(fake.base_url + "/chat/completions", "m", backoff=0.01)  # full URL used as is
    no_key.complete("hi")
    assert fake.requests[1]["auth"] is None and fake.requests[1]["path"] == "/v1/chat/completions"


def test_transient_failures_are_retried_with_backoff(fake):
    waits = []
    fake.script = [(503, {"error": "busy"}, 0), (429, {"error": "slow down"}, 0), (200, "not json", 0),
                   (200, {"choices": [{"message": {"content": "   "}}]}, 0)]
    c = ChatClient(fake.base_url, "m", backoff=0.5, retries=4, sleep=waits.append)
    assert c.complete("Describe the action running.").startswith("Answer 5")
    assert waits == [0.5, 1.0, 2.0]  # doubling backoff between the failed attempts of one request
    assert len(fake.requests) == 5  # the empty answer was asked again


def test_timeouts_retry_then_give_up_with_a_message(fake):
    fake.script = [(200, None, 0.6)]
    assert client(fake, timeout=0.2).complete("x").startswith("Answer")  # slow once, then fine
    fake.script = [(200, None, 0.6)] * 3
    with pytest.raises(ChatEndpointError, match="failed after 2 attempts"):
        client(fake, timeout=0.2, retries=1).complete("x")


def test_client_errors_fail_fast_and_unreachable_endpoint(fake):
    fake.script = [(401, {"error": "bad key"}, 0)]
    with pytest.raises(ChatEndpointError, match="HTTP 401.*bad key"):
        client(fake).complete("x")
    assert len(fake.requests) == 1
    fake.script = [(200, {"unexpected": True}, 0)]
    with pytest.raises(ChatEndpointError, match="unexpected reply shape"):
        client(fake).complete("x")
    dead = ChatClient("http://127.0.0.1:9/v1", "m", retries=1, backoff=0.0, timeout=1)
    with pytest.raises(ChatEndpointError, match="127.0.0.1:9.*failed after 2 attempts"):
        dead.complete("x")
    with pytest.raises(ChatEndpointError, match="no endpoint"):
        ChatClient("", "m")


def test_a_list_of_content_parts_is_joined_and_other_content_refused(fake, tmp_path, capsys):
    """Re-trial 26A S1: a reply whose `message.content` was a list of content parts (as some
    OpenAI-compatible servers send) or a number was saved as its Python str(), "[{'type': ...}]"
    or "42", as class descriptions, exit 0."""
    parts = [{"type": "text", "text": "A person "}, {"type": "image_url", "image_url": {"url": "x"}},
             {"type": "text", "text": " pedals a bike."}]
    fake.script = [(200, {"choices": [{"message": {"content": parts}}]}, 0)]
    assert client(fake).complete("x") == "A person pedals a bike."
    for content in (42, ["a", "b"], {"text": "a"}, [{"type": "text", "text": 7}]):
        fake.script = [(200, {"choices": [{"message": {"content": content}}]}, 0)]
        with pytest.raises(ChatEndpointError, match=r"/v1/chat/completions: unexpected reply shape"):
            client(fake).complete("x")
    classes = tmp_path / "classes.txt"
    classes.write_text("Biking\n")
    fake.script = [(200, {"choices": [{"message": {"content": 42}}]}, 0)]
    assert main(["--classes", str(classes), "--out", str(tmp_path / "d.json"), "--base-url", fake.base_url,
                 "--per-prompt", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unexpected reply shape" in err and fake.base_url in err
    assert not (tmp_path / "d.json").exists()


def test_a_refusal_is_said_quoting_it_not_as_empty_answers(fake):
    """Re-trial 27A M4: a model refusal (`message.refusal` with null content, or a `type: refusal`
    content part) was reported as "only empty answers", which points at the server."""
    for message in ({"content": None, "refusal": "I can't help with that."},
                    {"content": [{"type": "refusal", "refusal": "I can't help with that."}]}):
        fake.script = [(200, {"choices": [{"message": message}]}, 0)]
        with pytest.raises(ChatEndpointError, match=r"the model refused: \"I can't help with that.\"; change --model"):
            client(fake).complete("x")
    fake.script = [(200, {"choices": [{"message": {"content": "A bike.", "refusal": None}}]}, 0)]
    assert client(fake).complete("x") == "A bike."  # OpenAI's null refusal beside an answer


def test_describe_classes_uses_the_three_prompts(fake):
    out = describe_classes(["playing_guitar", "ApplyEyeMakeup"], client(fake), per_prompt=2)
    assert list(out) == ["playing_guitar", "ApplyEyeMakeup"] and all(len(v) == 6 for v in out.values())
    prompts = [r["body"]["messages"][-1]["content"] for r in fake.requests]
    assert prompts[:6:2] == [p.replace("{}", "playing guitar") for p in CUPL_PROMPTS]
    assert "What does a person apply eye makeup look like?" in prompts


def test_cli_writes_resumes_and_reports(fake, tmp_path, monkeypatch, capsys):
    classes = tmp_path / "classes.txt"
    classes.write_text("jumping\nrunning\n\n# comment\nswimming\n")
    out = tmp_path / "descriptions.json"
    monkeypatch.setenv("MY_KEY", "sk-env")
    fake.fail_for = {"swimming"}
    args = ["--classes", str(classes), "--out", str(out), "--base-url", fake.base_url, "--model", "fake-gpt",
            "--per-prompt", "1", "--api-key-env", "MY_KEY", "--backoff", "0", "--no-progress"]
    assert main(args) == 2  # swimming fails: message, no traceback, progress kept
    assert "HTTP 400" in capsys.readouterr().err
    table, meta = load_descriptions(out)
    assert list(table) == ["jumping", "running"] and meta["model"] == "fake-gpt"
    assert meta["prompts"] == list(CUPL_PROMPTS) and fake.requests[0]["auth"] == "Bearer sk-env"
    before = len(fake.requests)
    fake.fail_for = set()
    assert main(args) == 0
    assert len(fake.requests) - before == 3  # only swimming asked again
    assert fake.requests[-1]["auth"] == "Bearer sk-env"
    table, _ = load_descriptions(out)
    assert list(table) == ["jumping", "running", "swimming"] and all(len(v) == 3 for v in table.values())
    assert main([*args[:3], str(tmp_path / "other.json"), *args[4:], "--api-key", "sk-arg"]) == 0
    assert fake.requests[-1]["auth"] == "Bearer sk-arg"  # an explicit key wins over the environment


def test_a_descriptions_store_keeps_other_classes_and_refuses_other_settings(fake, tmp_path, capsys):
    """The same kinds as the caption store's (issue 28): a run on fewer classes dropped the others;
    another model or prompts resumed the file, mixing descriptions of two settings."""
    classes, out = tmp_path / "classes.txt", tmp_path / "d.json"
    classes.write_text("jumping\nrunning\n")
    args = ["--classes", str(classes), "--out", str(out), "--base-url", fake.base_url, "--model", "fake-gpt",
            "--per-prompt", "1", "--backoff", "0", "--no-progress"]
    assert main(args) == 0
    (tmp_path / "one.txt").write_text("jumping\n")
    capsys.readouterr()
    assert main([*args[:1], str(tmp_path / "one.txt"), *args[2:]]) == 0
    assert list(load_descriptions(out)[0]) == ["jumping", "running"]  # running kept
    # re-trial 19A: the summary said "1 classes" of a file holding 2
    assert "keeps 1 class(es) of earlier runs not in --classes: running" in capsys.readouterr().out
    assert main([*args, "--per-prompt", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "per_prompt 1 (this run: 2)" in err[0] and "--rebuild" in err[0] and str(out) in err[0]
    assert main([*args[:6], "--model", "other-gpt", "--per-prompt", "1", "--backoff", "0", "--no-progress"]) == 2
    assert "model 'fake-gpt' (this run: 'other-gpt')" in capsys.readouterr().err
    assert main([*args, "--per-prompt", "2", "--rebuild"]) == 0
    table, meta = load_descriptions(out)
    assert meta["per_prompt"] == 2 and all(len(v) == 6 for v in table.values())


def test_cli_bad_inputs(tmp_path, capsys):
    empty = tmp_path / "c.txt"
    empty.write_text("\n\n")
    assert main(["--classes", str(empty), "--out", str(tmp_path / "o.json"), "--base-url", "http://x"]) == 2
    assert "no class names" in capsys.readouterr().err
    dup = tmp_path / "d.txt"
    dup.write_text("a\nb\na\n")
    with pytest.raises(DescriptionsError, match="'a' is listed twice"):
        read_class_list(dup)
    bad_out = tmp_path / "bad.json"
    bad_out.write_text('{"a": [""]}')
    one = tmp_path / "one.txt"
    one.write_text("a\n")
    assert main(["--classes", str(one), "--out", str(bad_out), "--base-url", "http://x"]) == 2
    assert "'a': description 0 is empty" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--classes", "c", "--out", "o", "--prompt", "no placeholder"])


def test_out_refuses_the_class_list_and_anything_in_a_run(tmp_path, capsys):
    """issue 28: `describe-classes --out` = its own --classes with --rebuild replaced the class list,
    and an --out inside a run folder was written there (exit 0). Now one line naming the file,
    exit 2, before any request, the file unchanged."""
    classes = tmp_path / "classes.txt"
    classes.write_text("a\nb\n")
    run = tmp_path / "runs" / "pt"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("model: {}\n")
    args = ["--classes", str(classes), "--base-url", "http://127.0.0.1:9", "--retries", "0", "--no-progress"]
    for out, flags in ((classes, ["--rebuild"]), (run / "d.json", []), (run / "config.yaml", ["--rebuild"])):
        assert main([*args, "--out", str(out), *flags]) == 2, out
        err = capsys.readouterr().err
        assert str(out) in err and "--out" in err and err.count("\n") == 1, (out, err)
    assert classes.read_text() == "a\nb\n" and (run / "config.yaml").read_text() == "model: {}\n"
    assert not (run / "d.json").exists()


def _describe_args(classes, out, base_url):
    return ["--classes", str(classes), "--out", str(out), "--base-url", base_url, "--model", "fake-gpt",
            "--per-prompt", "1", "--backoff", "0", "--no-progress"]


def test_a_rerun_with_another_endpoint_max_tokens_or_temperature_is_refused(fake, tmp_path, capsys):
    """issue 28 re-trial 13: a rerun against another --base-url (or with another --max-tokens) into the
    same --out "resumed" (exit 0, "2 were already there"): every description was still the first
    endpoint's, but _meta now named the second. Now one line naming the key and the flag, exit 2,
    before any request, the file unchanged; --rebuild starts over with this run's settings."""
    classes, out = tmp_path / "classes.txt", tmp_path / "d.json"
    classes.write_text("jumping\nrunning\n")
    args = _describe_args(classes, out, fake.base_url)
    assert main(args) == 0
    before = out.read_bytes()
    capsys.readouterr()
    with FakeChat() as other:
        changes = ((["--base-url", other.base_url], "base_url", "--base-url"),
                   (["--max-tokens", "5"], "max_tokens", "--max-tokens"),
                   (["--temperature", "0.5"], "temperature", "--temperature"))
        for extra, key, flag in changes:
            assert main([*args, *extra]) == 2, key
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and key in err[0] and flag in err[0] and str(out) in err[0], (key, err)
            assert "--rebuild" in err[0]
        assert other.requests == [] and out.read_bytes() == before
        assert main([*args, "--base-url", other.base_url, "--max-tokens", "5", "--rebuild"]) == 0
        assert len(other.requests) == 6 and all(r["body"]["max_tokens"] == 5 for r in other.requests)
    _, meta = load_descriptions(out)
    assert meta["base_url"] == other.base_url and meta["max_tokens"] == 5


def test_meta_records_every_setting_that_shapes_the_text_and_never_the_key(fake, tmp_path):
    classes, out = tmp_path / "classes.txt", tmp_path / "d.json"
    classes.write_text("jumping\n")
    assert main([*_describe_args(classes, out, fake.base_url + "/"), "--api-key", "sk-secret-1",
                 "--temperature", "0.7", "--max-tokens", "33", "--prompt", "Describe {}."]) == 0
    _, meta = load_descriptions(out)
    assert meta["base_url"] == fake.base_url and meta["model"] == "fake-gpt" and meta["prompts"] == ["Describe {}."]
    assert meta["per_prompt"] == 1 and meta["temperature"] == 0.7 and meta["max_tokens"] == 33
    assert meta["system_prompt"] == fake.requests[0]["body"]["messages"][0]["content"]
    assert "sk-secret-1" not in out.read_text()
    # the same endpoint spelled with its full path resumes (nothing asked again)
    assert main([*_describe_args(classes, out, fake.base_url + "/chat/completions"), "--api-key", "sk-other",
                 "--temperature", "0.7", "--max-tokens", "33", "--prompt", "Describe {}."]) == 0
    assert len(fake.requests) == 1


def test_a_file_that_does_not_record_the_settings_is_not_resumed(fake, tmp_path, capsys):
    """A file written before max_tokens was recorded, another tool's descriptions (a synthetic data
    set's) and a hand-written one without _meta: their texts' settings are unknown, so a rerun
    neither keeps them as this run's nor relabels them; one line naming the key, exit 2."""
    classes = tmp_path / "classes.txt"
    classes.write_text("jumping\n")
    old_meta = {"source": "vision-free", "model": "fake-gpt", "base_url": fake.base_url,
                "prompts": list(CUPL_PROMPTS), "per_prompt": 1, "temperature": 0.99}
    files = {"old.json": ({"_meta": old_meta, "jumping": ["old text"]}, "max_tokens"),
             "synth.json": ({"_meta": {"source": "tgmae.data.synthetic"}, "jumping": ["synthetic"]}, "source"),
             "hand.json": ({"jumping": ["my own words"]}, "source")}
    for name, (obj, key) in files.items():
        out = tmp_path / name
        out.write_text(json.dumps(obj))
        assert main(_describe_args(classes, out, fake.base_url)) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and key in err[0] and str(out) in err[0], (name, err)
        assert json.loads(out.read_text()) == obj
    assert fake.requests == []


def test_class_list_names_differing_only_in_case_or_spacing_are_refused_naming_both(tmp_path):
    """`Biking` and `biking` would be described twice, and a data set refuses the pair anyway."""
    p = tmp_path / "c.txt"
    p.write_text("Biking\nwalking\nbiking\n")
    with pytest.raises(DescriptionsError) as e:
        read_class_list(p)
    assert all(s in str(e.value) for s in (str(p), "'Biking'", "'biking'", "lines 1 and 3")), str(e.value)


def test_a_class_list_of_numbers_only_is_refused_naming_it(tmp_path, capsys):
    """Re-trial 30B S2's kind: a chat model asked to describe class "0" answers about nothing; numbers
    only are classes without names, refused as oracle captions and class retrieval refuse them."""
    p = tmp_path / "c.txt"
    p.write_text("0\n1\n2\n3\n")
    assert main(["--classes", str(p), "--out", str(tmp_path / "o.json"), "--base-url", "http://x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(p) in err[0] and "numbers only" in err[0] and "'0', '1', '2', ..." in err[0], err
    assert not (tmp_path / "o.json").exists()
    p.write_text("0 walk\n1 run\n")  # a name with a number in it is a name
    assert read_class_list(p) == ["0 walk", "1 run"]


def test_a_class_list_or_existing_out_that_is_not_utf8_is_one_line_naming_it(tmp_path, capsys):
    """Re-trial 24A T2: a cp1252 file was a UnicodeDecodeError traceback naming no file."""
    classes = tmp_path / "c.txt"
    classes.write_bytes(b"walk\ncaf\xe9\n")
    out = tmp_path / "o.json"
    assert main(["--classes", str(classes), "--out", str(out), "--base-url", "http://x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{classes}:2: not UTF-8 (byte 0xe9 at column 4); save it as UTF-8" in err
    classes.write_text("walk\n")
    out.write_bytes(b'{"walk": ["caf\xe9"]}')
    assert main(["--classes", str(classes), "--out", str(out), "--base-url", "http://x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{out}:1: not UTF-8 (byte 0xe9 at column 15); save it as UTF-8" in err
