"""The ``qcore`` command: plugins, inspect, quantize, eval, bench.

Errors print one line (``qcore: error: ...``) and exit 1; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from qcore.errors import QcoreError


def _plugins_report(show_hooks: bool) -> dict[str, Any]:
    from qcore.plugins import registry

    reg = registry()
    rows = []
    for info in reg.plugins.values():
        row: dict[str, Any] = {
            "name": info.name,
            "distribution": info.distribution,
            "version": info.version,
            "methods": info.methods,
            "presets": sorted(p for p, d in reg.presets.items() if d.get("quant_method") in info.methods),
        }
        if show_hooks:
            row["hooks"] = info.hooks
        rows.append(row)
    broken = [
        {"name": b.name, "distribution": b.distribution, "version": b.version, "error": b.error} for b in reg.broken.values()
    ]
    return {"plugins": rows, "broken": broken}


def cmd_plugins(args: argparse.Namespace) -> int:
    report = _plugins_report(show_hooks=args.hooks or args.json)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    if not report["plugins"] and not report["broken"]:
        print("no qcore plugins installed (pip install qcore-plugin-<name>)")
    for row in report["plugins"]:
        print(f"{row['name']}  ({row['distribution'] or '-'} {row['version'] or ''})".rstrip())
        print(f"  methods: {', '.join(row['methods']) or '(observer)'}")
        if row["presets"]:
            print(f"  presets: {', '.join(row['presets'])}")
        if args.hooks:
            print(f"  hooks:   {', '.join(row['hooks'])}")
    for row in report["broken"]:
        print(f"{row['name']}  ({row['distribution'] or '-'} {row['version'] or ''})  BROKEN: {row['error']}")
    return 0


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return ""


def cmd_inspect(args: argparse.Namespace) -> int:
    from qcore.checkpoint import Checkpoint

    ckpt = Checkpoint(args.checkpoint)
    qc = ckpt.quantization_config
    if qc is not None and (not isinstance(qc.get("quant_method"), str) or not qc.get("quant_method")):
        raise QcoreError(
            f"{ckpt.directory / 'config.json'}: quantization_config has quant_method {qc.get('quant_method')!r}, not a "
            "method name; the checkpoint's config is damaged"
        )
    dtypes = Counter()
    for t in ckpt.tensors.values():
        dtypes[t.dtype] += t.nbytes
    report = {
        "path": str(ckpt.directory),
        "quant_method": qc.get("quant_method") if qc else None,
        "quantization_config": qc,
        "architecture": (ckpt.config or {}).get("architectures"),
        "shards": [s.name for s in ckpt.shards],
        "tensors": len(ckpt.tensors),
        "bytes": ckpt.total_bytes(),
        "bytes_by_dtype": dict(dtypes.most_common()),
    }
    if args.tensors:
        report["tensor_list"] = {n: {"dtype": t.dtype, "shape": list(t.shape), "shard": t.file.name} for n, t in ckpt.tensors.items()}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"checkpoint:   {report['path']}")
    print(f"architecture: {', '.join(report['architecture'] or ['?'])}")
    print(f"method:       {report['quant_method'] or 'none (float)'}")
    if qc:
        for k, v in qc.items():
            if k != "quant_method":
                print(f"  {k}: {json.dumps(v)}")
    print(f"shards:       {len(ckpt.shards)}; tensors: {len(ckpt.tensors)}; size: {_human_bytes(report['bytes'])}")
    for dtype, nbytes in report["bytes_by_dtype"].items():
        print(f"  {dtype:8s} {_human_bytes(nbytes)}")
    if args.tensors:
        for n, t in report["tensor_list"].items():
            print(f"  {n}  {t['dtype']} {t['shape']}  [{t['shard']}]")
    return 0


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def cmd_quantize(args: argparse.Namespace) -> int:
    import qcore
    from qcore.plugins import preset_config
    from qcore.saving import check_target, parse_size

    if bool(args.method) == bool(args.preset):
        raise QcoreError("give exactly one of --method or --preset (see `qcore plugins` for both)")
    if args.preset:
        config = preset_config(args.preset)
        if args.option:
            config = config.replace(**dict(_split_option(o) for o in args.option))
    else:
        options: dict[str, Any] = dict(_split_option(o) for o in args.option)
        for key in ("bits", "group_size"):
            if getattr(args, key) is not None:
                options[key] = getattr(args, key)
        config = qcore.config(args.method, **options)
    max_shard_size = parse_size(args.max_shard_size)
    for what in ("nsamples", "seqlen"):
        if getattr(args, what) < 1:
            raise QcoreError(f"--{what} must be a positive integer, got {getattr(args, what)}")
    src = Path(args.src)
    overwrite = "force" if args.force else args.overwrite
    check_target(Path(args.dst), overwrite, source=src if src.is_dir() else src.parent)
    if args.calibration and not Path(args.calibration).is_file():
        raise QcoreError(f"calibration file {args.calibration} does not exist")
    tokenizer = _load_tokenizer(args.src, args.trust_remote_code)
    if type(config).requires_calibration or args.calibration:
        if not args.calibration:
            raise QcoreError(f"method {config.quant_method!r} needs calibration data: pass --calibration FILE")
        model = qcore.load_quantized(args.src, trust_remote_code=args.trust_remote_code)
        model = qcore.quantize(
            model, config, calibration=Path(args.calibration), tokenizer=tokenizer,
            nsamples=args.nsamples, seqlen=args.seqlen,
        )
    else:
        model = qcore.load_quantized(args.src, quantization_config=config, trust_remote_code=args.trust_remote_code)
    out = qcore.save_quantized(model, args.dst, overwrite=overwrite, tokenizer=tokenizer, max_shard_size=max_shard_size)
    print(f"wrote {out} ({config.quant_method}, {len(model.qcore_modules)} modules quantized)")
    return 0


def _split_option(option: str) -> tuple[str, Any]:
    key, sep, value = option.partition("=")
    if not sep:
        raise QcoreError(f"--option takes KEY=VALUE, got {option!r}")
    return key.strip(), _parse_value(value)


def _load_tokenizer(path: str, trust_remote_code: bool = False) -> Any:
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception:  # no tokenizer files, or transformers missing: the weights do not need one
        return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qcore", description="Load, quantize, save and run quantized PyTorch models.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("plugins", help="list installed plugins, their methods, presets, hooks and failures")
    p.add_argument("--hooks", action="store_true", help="also list the hooks each plugin implements")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("inspect", help="show a checkpoint's method, config, shards and tensor sizes")
    p.add_argument("checkpoint", help="checkpoint directory or .safetensors file")
    p.add_argument("--tensors", action="store_true", help="list every tensor")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("quantize", help="quantize a float checkpoint and save it")
    p.add_argument("src", help="float checkpoint directory (config.json + safetensors)")
    p.add_argument("dst", help="output directory")
    p.add_argument("--method", help="quant_method, e.g. bitsandbytes, gptq (see `qcore plugins`)")
    p.add_argument("--preset", help="a named preset, e.g. bnb-nf4 (see `qcore plugins`)")
    p.add_argument("--bits", type=int, help="bits per weight (methods that have a 'bits' key)")
    p.add_argument("--group-size", dest="group_size", type=int, help="group size (methods that have one)")
    p.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="any config key, value parsed as JSON when it can be (repeatable)")
    p.add_argument("--calibration", metavar="FILE", help="calibration text file (methods that need data)")
    p.add_argument("--nsamples", type=int, default=128, help="calibration windows (default 128)")
    p.add_argument("--seqlen", type=int, default=512, help="tokens per calibration window (default 512)")
    p.add_argument("--max-shard-size", default="5GB", help="largest shard, e.g. 2GB (default 5GB)")
    p.add_argument("--overwrite", action="store_true", help="replace dst if it is a checkpoint (atomically)")
    p.add_argument("--force", action="store_true", help="with --overwrite: replace dst even if it is not a checkpoint")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let transformers run Python code shipped with src (auto_map); off by default")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("eval", help="perplexity of a checkpoint on a text file (fixed protocol)")
    p.add_argument("checkpoint", help="checkpoint directory (quantized or float), with tokenizer files")
    p.add_argument("--text", required=True, help="text file to measure perplexity on")
    p.add_argument("--max-tokens", type=_positive_int, default=4096, help="tokens used (default 4096)")
    p.add_argument("--window", type=_positive_int, default=512, help="tokens per window (default 512)")
    p.add_argument("--tokenizer", help="tokenizer directory, if not the checkpoint's")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let transformers run Python code shipped with the checkpoint (auto_map); off by default")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_run_eval)
    return parser


def _positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {raw!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {raw!r}")
    return value


def _run_eval(args: argparse.Namespace) -> int:
    from qcore.evaluate import run_eval

    return run_eval(args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Exception as exc:  # one clear line; the traceback only with --debug
        if args.debug:
            raise
        kind = "" if isinstance(exc, QcoreError) else f"{type(exc).__name__}: "
        print(f"qcore: error: {kind}{exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("qcore: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
