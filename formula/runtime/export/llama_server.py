"""llama.cpp's own `llama-server`, which `formula serve` runs: its `--jinja` chat handler parses the
`<tool_call>` blocks the formula's templates render into OpenAI `tool_calls` (llama-cpp-python's
server does so only when a tool is forced), and it answers the Anthropic Messages API too.

The binary is `$FORMULA_LLAMA_SERVER`, else `llama-server` on PATH, else one built once from the
llama.cpp sources vendored in the sdist of the installed llama-cpp-python (so its GGUF reader is
the one the evals used), fetched with pip from the package index: CPU only, no network access of
its own, into `$XDG_CACHE_HOME/formula/llama-server/<version>/` (default `~/.cache`; one build per
kind of CPU), under a file lock so that two processes never build it at once.
`python -m formula.runtime.export.llama_server` builds it ahead of time (a container image, a
machine going offline)."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

# CPU only; no HTTPS (the server listens on plain HTTP, the model comes from the store); no web UI,
# whose assets llama.cpp's build would otherwise download; one static binary, so the cache holds a
# single file that does not depend on the build folder.
CMAKE_FLAGS = ("-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DGGML_NATIVE=ON",
               "-DGGML_OPENMP=OFF", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TOOLS=ON",
               "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_UI=OFF",
               "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_OPENSSL=OFF")


class Unavailable(RuntimeError):
    """No llama-server can be found or built here; the message says what to do."""


def say(msg: str) -> None:
    print(f"llama-server: {msg}", file=sys.stderr, flush=True)


def version() -> str:
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        raise Unavailable("llama-cpp-python is not installed, and its sources are what llama-server "
                          "is built from: pip install llama-cpp-python, or set FORMULA_LLAMA_SERVER") from None


def cache_dir() -> Path:
    """The sources of this llama-cpp-python version; builds in a folder per CPU (`cpu_key`)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "formula" / "llama-server" / version()


def cpu_key() -> str:
    """The build is native (GGML_NATIVE): a home folder shared by machines with other CPUs (a
    cluster's) gets a build per kind of CPU instead of one that dies of an illegal instruction."""
    import hashlib
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    ident = flags or platform.processor() or platform.platform()
    return f"{platform.machine() or 'cpu'}-{hashlib.sha256(ident.encode()).hexdigest()[:12]}"


def built_path() -> Path:
    return cache_dir() / cpu_key() / "bin" / "llama-server"


def find() -> Path | None:
    """The llama-server to run without building one, if there is one."""
    env = os.environ.get("FORMULA_LLAMA_SERVER")
    if env:
        path = Path(env).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise Unavailable(f"FORMULA_LLAMA_SERVER={env} is not an executable file")
        return path
    on_path = shutil.which("llama-server")
    if on_path:
        return Path(on_path)
    built = built_path()
    return built if built.is_file() else None


def binary() -> Path:
    """The llama-server to run, built on first use (minutes, once per llama-cpp-python version)."""
    found = find()
    if found is not None:
        return found
    from filelock import FileLock, Timeout

    home = cache_dir()
    home.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(home) + ".lock")  # the sources are shared by every CPU's build
    try:
        lock.acquire(timeout=0)
    except Timeout:
        say(f"another process is building it in {home}; waiting for it")
        lock.acquire()
    try:
        built = built_path()
        if not built.is_file():  # the other process may have finished it while this one waited
            build(home, built.parent.parent)
        return built
    finally:
        lock.release()


def program(name: str) -> Path:
    """The native programs export formats run (formula/formats: ExportFormat.serve)."""
    if name != "llama-server":
        raise Unavailable(f"no way to build `{name}`")
    return binary()


def tools() -> tuple[str, str]:
    """cmake and a C++ compiler, or a message naming what is missing."""
    venv_bin = Path(sys.executable).parent  # pip's `cmake` package installs here
    cmake = shutil.which("cmake") or shutil.which("cmake", path=str(venv_bin))
    cxx = os.environ.get("CXX") or next((c for c in ("c++", "g++", "clang++") if shutil.which(c)), None)
    missing = [name for name, found in (("cmake", cmake), ("a C++ compiler (c++, g++ or clang++)", cxx)) if not found]
    if missing:
        raise Unavailable(
            f"building llama-server needs {' and '.join(missing)}: install them (Debian/Ubuntu: "
            "`apt-get install cmake g++`; macOS: `xcode-select --install` and `brew install cmake`; or "
            "`pip install cmake`), or put a llama-server binary on PATH or in FORMULA_LLAMA_SERVER")
    assert cmake and cxx
    return cmake, cxx


def build(home: Path, into: Path) -> None:
    """Sources in `home/src` (fetched once), the build in `into/build`, the binary in `into/bin`."""
    cmake, _ = tools()
    src = home / "src" / "vendor" / "llama.cpp"
    into.mkdir(parents=True, exist_ok=True)
    log = into / "build.log"
    say(f"building it once from the llama.cpp sources of llama-cpp-python {version()} into {into} "
        f"(several minutes; log: {log}). Set FORMULA_LLAMA_SERVER to use a llama-server of your own.")
    if not (src / "tools" / "server").is_dir():
        fetch_sources(home)
    with open(log, "w") as out:
        run([cmake, "-S", str(src), "-B", str(into / "build"), *CMAKE_FLAGS], out, log)
        run([cmake, "--build", str(into / "build"), "--target", "llama-server",
             "-j", str(os.cpu_count() or 1)], out, log, progress=True)
    made = into / "build" / "bin" / "llama-server"
    if not made.is_file():
        raise Unavailable(f"the build finished but made no {made}; see {log}")
    (into / "bin").mkdir(exist_ok=True)
    tmp = into / "bin" / f".llama-server.{os.getpid()}"
    shutil.copy2(made, tmp)
    os.replace(tmp, into / "bin" / "llama-server")  # whole or absent, never half-copied
    say(f"built {into / 'bin' / 'llama-server'}")


def fetch_sources(home: Path) -> None:
    """The llama-cpp-python sdist of the installed version, from the package index, unpacked."""
    v = version()
    say(f"fetching the llama-cpp-python {v} sources with pip")
    with tempfile.TemporaryDirectory(dir=home) as tmp:
        r = subprocess.run([sys.executable, "-m", "pip", "download", f"llama-cpp-python=={v}",
                            "--no-binary", ":all:", "--no-deps", "-d", tmp],
                           capture_output=True, text=True)
        sdists = sorted(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if r.returncode or not sdists:
            raise Unavailable(f"pip could not fetch the llama-cpp-python {v} sources:\n"
                              + (r.stderr or r.stdout).strip()[-2000:]
                              + "\nput a llama-server binary on PATH or in FORMULA_LLAMA_SERVER instead")
        with tarfile.open(sdists[0]) as tar:
            tar.extractall(tmp, filter="data")
        unpacked = Path(tmp) / f"llama_cpp_python-{v}"
        if not (unpacked / "vendor" / "llama.cpp" / "tools" / "server").is_dir():
            raise Unavailable(f"the llama-cpp-python {v} sources hold no vendor/llama.cpp/tools/server; "
                              "put a llama-server binary on PATH or in FORMULA_LLAMA_SERVER")
        shutil.rmtree(home / "src", ignore_errors=True)
        os.replace(unpacked, home / "src")


def run(cmd: list[str], out, log: Path, progress: bool = False) -> None:
    """One build command, its output in the log; cmake's percentages as a line per tenth."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: os.nice(10))  # a one-off build yields to the user's work
    assert proc.stdout is not None
    shown = -1
    tail: list[str] = []
    for line in proc.stdout:
        out.write(line)
        tail = (tail + [line])[-40:]
        m = re.match(r"\[\s*(\d+)%\]", line)
        if progress and m and int(m.group(1)) // 10 > shown:
            shown = int(m.group(1)) // 10
            say(f"compiling: {m.group(1)}%")
    if proc.wait():
        raise Unavailable(f"`{' '.join(cmd[:3])} ...` failed (exit {proc.returncode}); the end of {log}:\n"
                          + "".join(tail))


if __name__ == "__main__":
    try:
        print(binary())
    except Unavailable as exc:
        say(str(exc))
        sys.exit(1)
