"""Chat templates rendered in a child process, within a time limit and a memory limit.

Jinja's sandbox stops a template from running code, not from running long or allocating much:
``{{ 'x' * 3000000000 }}`` or two nested ``range(100000)`` loops in a checkpoint's
``chat_template.jinja`` would exhaust or hang the process that renders it. So ``pasture serve``
(and ``pasture generate --chat``) render in one long-lived child process::

    renderer = TemplateRenderer(template)       # starts the child (about 0.1 s)
    segments = renderer.segments(messages, True, bos_token="<s>", eos_token="</s>")
    renderer.close()

The child imports Jinja2 and ``pasture.finetune.template`` alone (not the package, which would
load torch), then caps its address space at ``memory_bytes`` above what it uses after those
imports (RLIMIT_AS: an allocation past it fails at once, as a MemoryError), forbids writing files
(RLIMIT_FSIZE 0) and core dumps, and answers one JSON line per JSON line on its pipes. The parent
waits at most ``seconds`` for an answer; past that it kills the child, and the next call starts
a new one. A rendered chat longer than ``max_chars`` characters is refused in the child, before
it crosses the pipe. Every failure is a ``PastureError`` whose message begins "chat template:".
One child renders one chat at a time (calls from several threads take turns).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from ..errors import PastureError

SECONDS = 2.0  # published chat templates render a long chat in milliseconds
MEMORY_BYTES = 256 << 20
MAX_CHARS = 4 << 20

_CHILD = r"""
import json, os, resource, sys, types
package_dir, memory, max_chars = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for name, sub in (("pasture", ""), ("pasture.finetune", "finetune")):
    stub = types.ModuleType(name)
    stub.__path__ = [os.path.join(package_dir, sub)]
    sys.modules[name] = stub
from pasture.errors import PastureError
from pasture.finetune.template import chat_segments
template = sys.stdin.readline()
template = json.loads(template)
try:  # Linux; elsewhere (macOS ignores RLIMIT_AS anyway) only the time limit holds
    with open("/proc/self/statm") as f:
        used = int(f.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (used + memory, used + memory))
except (OSError, ValueError):
    pass
resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    try:
        job = json.loads(line)
        segments = chat_segments(
            template, job["messages"], job["add_generation_prompt"], **job["variables"]
        )
        chars = sum(len(text) for text, _ in segments)
        if chars > max_chars:
            reply = {"error": f"chat template: the rendered chat has {chars:,} characters, "
                              f"more than the limit of {max_chars:,}"}
        else:
            reply = {"segments": segments}
    except PastureError as e:
        reply = {"error": str(e)}
    except MemoryError:
        reply = {"error": f"chat template: rendering needed more than {memory >> 20} MiB"}
    except RecursionError:
        reply = {"error": "chat template: recursion too deep"}
    except Exception as e:
        reply = {"error": f"chat template: {type(e).__name__}: {e}"}
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
"""


class TemplateRenderer:
    """``finetune.template.chat_segments`` for one template, computed in a child process
    under limits (see the module docstring)."""

    def __init__(
        self,
        template: str,
        seconds: float = SECONDS,
        memory_bytes: int = MEMORY_BYTES,
        max_chars: int = MAX_CHARS,
    ) -> None:
        self.template, self.seconds = template, seconds
        self.memory_bytes, self.max_chars = memory_bytes, max_chars
        self._lock = threading.Lock()
        self._child: subprocess.Popen | None = None
        self._buffer = b""
        with self._lock:
            self._start()

    @property
    def pid(self) -> int | None:
        """The child's process id (None: none running; the next call starts one)."""
        return self._child.pid if self._child is not None else None

    def segments(
        self,
        messages: Sequence[dict[str, str]],
        add_generation_prompt: bool = False,
        **variables: str,
    ) -> list[tuple[str, bool]]:
        """(text, is_response) pieces of the rendered chat, as ``chat_segments`` gives them."""
        job = {
            "messages": list(messages),
            "add_generation_prompt": add_generation_prompt,
            "variables": variables,
        }
        with self._lock:
            if self._child is None:
                self._start()
            reply = self._ask(json.dumps(job) + "\n", self.seconds)
        if "error" in reply:
            raise PastureError(reply["error"])
        return [(text, response) for text, response in reply["segments"]]

    def close(self) -> None:
        """End the child (idempotent)."""
        with self._lock:
            self._kill()

    def __enter__(self) -> TemplateRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        package_dir = Path(__file__).resolve().parent.parent
        argv = [sys.executable, "-I", "-c", _CHILD, str(package_dir)]
        argv += [str(self.memory_bytes), str(self.max_chars)]
        self._child = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,  # read only when it has ended: why it could not start
            start_new_session=True,  # a terminal's Ctrl-C goes to the server, not here
        )
        self._buffer = b""
        self._ask(json.dumps(self.template) + "\n", 30.0)  # imports: slower on a busy machine

    def _ask(self, line: str, seconds: float) -> dict:
        """Send one line, read one JSON line back within ``seconds`` (else kill the child)."""
        child = self._child
        try:
            child.stdin.write(line.encode())
            child.stdin.flush()
        except (BrokenPipeError, OSError):
            return self._died()
        deadline = time.monotonic() + seconds
        fd = child.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            ready = select.select([fd], [], [], max(left, 0))[0] if left > 0 else []
            if not ready:
                self._kill()
                raise PastureError(
                    f"chat template: rendering took longer than {seconds:g} s; stopped"
                )
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return self._died()
            self._buffer += chunk
        line_out, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line_out)

    def _died(self) -> dict:
        child = self._child
        try:
            code = child.wait(timeout=2)  # it closed its output: it is ending
        except subprocess.TimeoutExpired:
            code = None
        said = b"" if code is None else child.stderr.read()[-300:]  # it has ended: EOF soon
        said = said.decode(errors="replace").strip().splitlines()
        self._kill()
        how = f"signal {-code}" if code is not None and code < 0 else f"status {code}"
        last = f": {said[-1]}" if said else ""
        raise PastureError(f"chat template: the rendering process ended ({how}){last}")

    def _kill(self) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        for stream in (child.stdin, child.stdout, child.stderr):
            with contextlib.suppress(OSError):
                stream.close()


__all__ = ["TemplateRenderer"]
