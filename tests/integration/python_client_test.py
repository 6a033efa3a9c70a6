#!/usr/bin/python3
"""chord's gRPC API from Python: generate stubs from proto/ with protoc and
grpc_python_plugin, start `chord serve` on a free port, check health and
GetModelInfo, stream a generation, and stop the server with SIGTERM.

Exit codes: 0 pass, 1 fail, 77 skipped (python3-grpcio or python3-protobuf missing).
"""
import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

SKIP = 77


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def generate_stubs(proto_dir, out_dir):
    subprocess.run(
        ["protoc", "-I", proto_dir, "--python_out", out_dir, "--grpc_python_out", out_dir,
         "--plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin",
         os.path.join(proto_dir, "chord", "v1", "inference.proto")],
        check=True)
    # Make the generated folders importable as packages.
    for sub in ("chord", os.path.join("chord", "v1")):
        open(os.path.join(out_dir, sub, "__init__.py"), "a").close()
    sys.path.insert(0, out_dir)


class Server:
    """`chord serve` as a child process; its output is collected by a thread."""

    def __init__(self, chord, port):
        self.lines = []
        self.serving = threading.Event()
        self.proc = subprocess.Popen(
            [chord, "serve", "--port", str(port), "--workers", "2", "--ctx-size", "256", "--threads", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("chord serve: serving"):
                self.serving.set()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return None
        return self.proc.returncode

    def output(self):
        return "\n".join(self.lines[-60:])


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def run(args, stubs_dir):
    import grpc
    from chord.v1 import inference_pb2, inference_pb2_grpc

    port = free_port()
    server = Server(args.chord, port)
    try:
        check(server.serving.wait(timeout=90), "chord serve did not report SERVING:\n" + server.output())
        channel = grpc.insecure_channel("127.0.0.1:%d" % port)
        grpc.channel_ready_future(channel).result(timeout=10)

        # grpc.health.v1 without its stubs: the request is the empty message and
        # the answer is field 1 (status), SERVING = 1, i.e. bytes 08 01.
        check_health = channel.unary_unary("/grpc.health.v1.Health/Check",
                                           request_serializer=lambda _: b"",
                                           response_deserializer=lambda b: b)
        check(check_health(None, timeout=5) == b"\x08\x01", "health is not SERVING")

        stub = inference_pb2_grpc.InferenceStub(channel)
        info = stub.GetModelInfo(inference_pb2.GetModelInfoRequest(), timeout=10)
        check(info.architecture == "llama", "architecture %r" % info.architecture)
        check(info.vocab_size > 0 and info.n_layer > 0, "model info %s" % info)
        check(len(info.sha256) == 64, "sha256 %r" % info.sha256)

        request = inference_pb2.GenerateRequest(prompt="Once upon a time", max_tokens=16, ignore_eos=True)
        request.sampling.temperature = 0.0
        messages = list(stub.Generate(request, timeout=60))
        tokens = [t for m in messages for t in m.token_ids]
        text = "".join(m.text for m in messages)
        check(len(tokens) == 16, "got %d tokens" % len(tokens))
        check(text != "", "no text")
        check(messages[-1].HasField("final"), "last message has no final info")
        check(messages[-1].final.finish_reason == inference_pb2.FINISH_REASON_LENGTH,
              "finish reason %d" % messages[-1].final.finish_reason)
        check(messages[-1].final.usage.completion_tokens == 16, "usage %s" % messages[-1].final.usage)

        # The server's own detokenizer agrees with the streamed text.
        detok = stub.Detokenize(inference_pb2.DetokenizeRequest(token_ids=tokens), timeout=10)
        check(detok.text == text, "detokenized %r != streamed %r" % (detok.text, text))

        try:
            bad = inference_pb2.GenerateRequest(prompt="x", max_tokens=4)
            bad.sampling.temperature = -1.0
            list(stub.Generate(bad, timeout=10))
            check(False, "a negative temperature was accepted")
        except grpc.RpcError as error:
            check(error.code() == grpc.StatusCode.INVALID_ARGUMENT, "code %s" % error.code())
        channel.close()
    finally:
        code = server.stop()
    check(code == 0, "chord serve exited with %r:\n%s" % (code, server.output()))
    print("python client: health, model info, streaming, detokenize and errors OK")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--chord", required=True)
    parser.add_argument("--proto-dir", required=True)
    args = parser.parse_args()
    try:
        import grpc  # noqa: F401
        import google.protobuf  # noqa: F401
    except ImportError as error:
        print("SKIP: %s (install python3-grpcio and python3-protobuf)" % error)
        return SKIP
    with tempfile.TemporaryDirectory() as stubs_dir:
        generate_stubs(args.proto_dir, stubs_dir)
        try:
            run(args, stubs_dir)
        except AssertionError as error:
            print("FAIL: %s" % error)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
