"""DJLServing's `serving.properties` as tpserve configuration, for users of the Kubernetes /
DJLServing write-up: `tpserve --serving-properties FILE` (command-line flags given as well win).

    engine=DeepSpeed                       -> --engine auto (fastgen where it can run, else autotp)
    option.model_id=/models/qwen2.5-7b     -> --model (a local directory; hub ids are fetched by Ansible)
    option.tensor_parallel_degree=4        -> --tp-size
    option.data_type=fp16|bf16|fp32        -> --dtype float16|bfloat16|float32
    option.max_new_tokens=256              -> --max-new-tokens
    option.model_loading_timeout=1800      -> accepted (the launcher's rendezvous waits 1800 s)

Any other key is refused with its name; a value that makes no sense is refused with the reason.
"""

from __future__ import annotations

from pathlib import Path

ENGINES = {"deepspeed": "auto", "tpserve": "auto", "fastgen": "fastgen", "autotp": "autotp"}
DTYPES = {"fp16": "float16", "float16": "float16", "bf16": "bfloat16", "bfloat16": "bfloat16",
          "fp32": "float32", "float32": "float32", "auto": "auto"}  # fmt: skip
KEYS = (
    "engine", "option.model_id", "option.tensor_parallel_degree", "option.data_type",
    "option.max_new_tokens", "option.model_loading_timeout",
)  # fmt: skip


class PropertiesError(ValueError):
    pass


def parse(text: str) -> dict[str, str]:
    """key=value lines (Java properties subset: # and ! comments, blank lines, ':' or '=')."""
    out: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#!":
            continue
        sep = min((i for i in (line.find("="), line.find(":")) if i > 0), default=-1)
        if sep < 0:
            raise PropertiesError(f"line {n}: {line!r} is not key=value")
        key, value = line[:sep].strip(), line[sep + 1 :].strip()
        if key not in KEYS:
            raise PropertiesError(f"line {n}: unknown key {key!r} (supported: {', '.join(KEYS)})")
        out[key] = value
    return out


def _positive_int(key: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise PropertiesError(f"{key}={value!r}: not an integer") from None
    if number < 1:
        raise PropertiesError(f"{key}={value}: must be >= 1")
    return number


def to_args(path: str | Path) -> list[str]:
    """The tpserve flags the file stands for (to put BEFORE the command line's own flags)."""
    props = parse(Path(path).read_text(encoding="utf-8"))
    args: list[str] = []
    if "engine" in props:
        engine = ENGINES.get(props["engine"].lower())
        if engine is None:
            raise PropertiesError(f"engine={props['engine']!r}: tpserve runs {sorted(ENGINES)}")
        args += ["--engine", engine]
    if "option.model_id" in props:
        model = Path(props["option.model_id"])
        if not (model / "config.json").is_file():
            raise PropertiesError(
                f"option.model_id={props['option.model_id']!r}: not a local model directory with config.json "
                "(tpserve does not download: Ansible's model role fetches hub ids)"
            )
        args += ["--model", str(model)]
    if "option.tensor_parallel_degree" in props:
        key = "option.tensor_parallel_degree"
        args += ["--tp-size", str(_positive_int(key, props[key]))]
    if "option.data_type" in props:
        dtype = DTYPES.get(props["option.data_type"].lower())
        if dtype is None:
            raise PropertiesError(
                f"option.data_type={props['option.data_type']!r}: use one of {sorted(DTYPES)}"
            )
        args += ["--dtype", dtype]
    if "option.max_new_tokens" in props:
        args += [
            "--max-new-tokens",
            str(_positive_int("option.max_new_tokens", props["option.max_new_tokens"])),
        ]
    if "option.model_loading_timeout" in props:
        _positive_int("option.model_loading_timeout", props["option.model_loading_timeout"])
    return args
