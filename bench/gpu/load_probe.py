"""Where a GPU build's model load works and where it crashes (issue 15), each way in a child
process so a SIGSEGV is a result, not the end of the probe.

  python bench/gpu/load_probe.py MODEL.gguf

  main-thread       LlamaModel(all layers offloaded) on the process's main thread
  default-stack     the same on a thread with the default stack (the old asyncio.to_thread load)
  2mib-stack        the same on a thread with 2 MiB of stack (pthreads' default where the stack
                    rlimit is unlimited)
  engine            LlamaCppEngine.start(): its own thread with a 256 MiB stack, then 8 tokens

Prints the stack limits and, per way, its exit status (negative: killed by that signal) and the
last lines of its output. Exits 0 when the engine way worked.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import threading

WAYS = {
    "main-thread": """
from pathlib import Path
from seekserve.engines.llamacpp.model import LlamaModel
m = LlamaModel(Path(MODEL), gpu_layers=-1)
print("loaded", m.name, "layers", m.n_layer)
m.close()
""",
    "default-stack": """
import threading
from pathlib import Path
from seekserve.engines.llamacpp.model import LlamaModel
print("thread stack_size setting:", threading.stack_size())
def load():
    m = LlamaModel(Path(MODEL), gpu_layers=-1)
    print("loaded", m.name, "layers", m.n_layer)
    m.close()
t = threading.Thread(target=load)
t.start()
t.join()
""",
    "2mib-stack": """
import threading
from pathlib import Path
from seekserve.engines.llamacpp.model import LlamaModel
threading.stack_size(2 * 2**20)  # what pthreads gives where the stack rlimit is unlimited
def load():
    m = LlamaModel(Path(MODEL), gpu_layers=-1)
    print("loaded", m.name, "layers", m.n_layer)
    m.close()
t = threading.Thread(target=load)
t.start()
t.join()
""",
    "engine": """
import asyncio
from pathlib import Path
from seekserve.engines.base import FinishEvent, GenerationRequest, SamplingParams
from seekserve.engines.llamacpp.engine import LlamaCppEngine
from seekserve.settings import LlamaCppEngineSettings

async def main():
    engine = LlamaCppEngine(LlamaCppEngineSettings(n_ctx=1024, max_running=2), Path(MODEL))
    await engine.start()
    print("state:", engine.state())
    print("description:", engine.description)
    prompt = engine.tokenizer.encode("Hello there")
    request = GenerationRequest(request_id="probe", prompt=prompt, max_tokens=8,
                                sampling=SamplingParams(temperature=0.0))
    events = [e async for e in engine.generate(request)]
    assert isinstance(events[-1], FinishEvent), events[-1]
    print("generated", events[-1].completion_tokens, "tokens")
    await engine.aclose()

asyncio.run(main())
""",
}


def _limit(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else f"{value // 1024} KiB"


def main() -> int:
    model = sys.argv[1]
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    print(f"RLIMIT_STACK soft {_limit(soft)}, hard {_limit(hard)}; "
          f"threading.stack_size() {threading.stack_size()}")
    status = {}
    for name, code in WAYS.items():
        done = subprocess.run([sys.executable, "-X", "faulthandler", "-c",
                               f"MODEL = {model!r}\n{code}"],
                              capture_output=True, text=True, timeout=300)
        status[name] = done.returncode
        tail = "\n    ".join((done.stdout + done.stderr).strip().splitlines()[-8:])
        print(f"\n[{name}] exit status {done.returncode}\n    {tail}", flush=True)
    print("\nsummary: " + ", ".join(f"{k} {v}" for k, v in status.items()))
    return 0 if status["engine"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
