"""Command line: ``python -m trainer <command>``.

Commands:
  train       train a model (single process, or one process per rank under torchrun/srun)
  evaluate    perplexity (and ROUGE/BLEU of generated reports) of a checkpoint, as JSON
  metrics     AUC/sensitivity/specificity, Dice/mIoU, MAE/Pearson, ROUGE/BLEU from predictions
  params      parameter count of a preset (no memory allocated)
  ds-config   the DeepSpeed JSON a run would use
  tokenizer   train the byte-level BPE tokenizer on text files
  synth       write a small synthetic multimodal dataset in the shard format

Exit codes: 0 done, 2 configuration error, 75 (EXIT_REQUEUE) stopped by SIGTERM/SIGUSR1 after
writing a checkpoint, anything else a crash.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import sys
from pathlib import Path

from trainer import EXIT_CONFIG_ERROR
from trainer.config import ConfigError, ParallelDims, count_params, human, load_config


def _overrides(args: argparse.Namespace) -> list[str]:
    """Flags that are shorthands for config keys, then the explicit ``--set`` overrides."""
    out = []
    pairs = {
        "engine": "parallel.engine",
        "data": "data.path",
        "save_dir": "checkpoint.save_dir",
        "resume": "checkpoint.resume",
        "metrics_port": "metrics_port",
        "max_steps": "optim.max_steps",
        "cache_dir": "data.cache_dir",
        "zero_stage": "parallel.zero_stage",
    }
    for attr, key in pairs.items():
        value = getattr(args, attr, None)
        if value is not None:
            out.append(f"{key}={json.dumps(value) if isinstance(value, str) else value}")
    return out + list(args.set or [])


def cmd_train(args: argparse.Namespace) -> int:
    """Logging, config, build, train, close."""
    cfg = load_config(args.config, _overrides(args))  # before importing torch: errors are fast

    from trainer.train import StopFlag, build_run

    stop = StopFlag()
    stop.install()
    run = build_run(cfg, stop)
    try:
        code = run.trainer.train()
    finally:
        run.close()
    if cfg.parallel.engine == "fsdp2":
        # FSDP2 on gloo sometimes aborts in interpreter teardown after a clean run
        # (notes/torch-deepspeed-cpu.md); leave without running it.
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    return code


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Load a checkpoint's config and weights; perplexity over the held-out samples."""
    from trainer.checkpoint import read_manifest, verify
    from trainer.config import config_from_dict, replace
    from trainer.engines import load_model_weights
    from trainer.train import build_run

    path = Path(args.checkpoint)
    ok, reason = verify(path)
    if not ok:
        raise ConfigError(f"{path}: {reason}")
    manifest = read_manifest(path)
    cfg = config_from_dict(manifest["config"])
    # One process, fp32, whatever engine and world size wrote the checkpoint.
    cfg = replace(
        cfg,
        data={"path": args.data or cfg.data.path, "eval_samples": args.samples, "cache_dir": ""},
        parallel={"engine": "single", "precision": "fp32", "offload_optimizer": False,
                  "offload_params": False},
        checkpoint={"save_dir": "", "resume": ""},
        metrics_port=0,
        metrics_jsonl="",
        eval_batches=max(1, math.ceil(args.samples / cfg.data.micro_batch_size)),
    )  # fmt: skip
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        os.environ.pop(key, None)
    run = build_run(cfg)
    try:
        run.trainer.check_tokenizer(path, manifest)  # --data with other ids would lie
        load_model_weights(path, run.engine.raw, manifest["engine"])  # type: ignore[attr-defined]
        result = run.trainer.evaluate()
        text = None
        if args.generate:
            text = _report_generation(run, args.generate, args.max_new_tokens)
    finally:
        run.close()
    report = {
        "checkpoint": str(path),
        "engine": manifest["engine"],
        "step": manifest["step"],
        "samples": args.samples,
        "loss": result["training_eval_loss"],
        "perplexity": result["training_eval_perplexity"],
    }
    if text is not None:
        report["report_generation"] = text
    rendered = json.dumps(report, indent=1)
    if args.out:
        Path(args.out).write_text(rendered)
    print(rendered)
    return 0


def _report_generation(run: object, count: int, max_new_tokens: int) -> dict[str, object]:
    """ROUGE/BLEU of greedy reports for the first ``count`` held-out samples with text."""
    from trainer.data.shards import ShardReader
    from trainer.evaluation import generate_reports, text_metrics

    collate = run.data.eval_loader.collate  # type: ignore[attr-defined]
    # Its own reader: the eval loader's prefetch thread may still be reading through the
    # loader's file handles, and a shared seek + read would interleave.
    reader = ShardReader(run.cfg.data.path)  # type: ignore[attr-defined]
    held_out = min(len(reader), run.cfg.data.eval_samples)  # type: ignore[attr-defined]
    try:
        with_text = (s for s in (reader[i] for i in range(held_out)) if s.text)
        samples = list(itertools.islice(with_text, count))
    finally:
        reader.close()
    model = run.engine.raw  # type: ignore[attr-defined]
    predictions = generate_reports(model, collate, samples, max_new_tokens)
    references = [s.text or "" for s in samples]
    # Scores and sample keys only: generated text stays out of reports (no free text leaves).
    return {
        "samples": len(samples),
        "keys": [s.key for s in samples],
        **text_metrics(predictions, references),
    }


def cmd_metrics(args: argparse.Namespace) -> int:
    """Seed 7.1 metrics from a JSONL file of prediction records."""
    from trainer.evaluation import metrics_for

    lines = Path(args.predictions).read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    result = {"task": args.task, "records": len(records), **metrics_for(args.task, records)}
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    """Print parameter counts per component."""
    cfg = load_config(args.config, args.set)
    counts = count_params(cfg.model)
    for name, n in counts.items():
        print(f"{name:10s} {n:>16,d}  {human(n)}")
    if cfg.model.nominal_params:
        ratio = counts["total"] / cfg.model.nominal_params
        print(f"nominal    {human(cfg.model.nominal_params)}  ratio {ratio:.3f}")
    return 0


def cmd_ds_config(args: argparse.Namespace) -> int:
    """Print the DeepSpeed config a run of this preset would use at ``--world-size``."""
    from trainer.ds_config import build_ds_config

    cfg = load_config(args.config, args.set)
    dims = ParallelDims.from_config(cfg.parallel, args.world_size)
    print(json.dumps(build_ds_config(cfg, dims, cfg.model.d_model), indent=2))
    return 0


def cmd_tokenizer(args: argparse.Namespace) -> int:
    """Train the byte-level BPE tokenizer on UTF-8 text files or a dataset version's text."""
    from tqdm import tqdm

    from trainer.data.tokenizer import Tokenizer, dataset_texts

    if not args.input and not args.data:
        print("give --input FILE ... or --data DATASET_DIR ...", file=sys.stderr)
        return 2
    texts = [Path(p).read_text(encoding="utf-8") for p in args.input or ()]
    texts += dataset_texts(args.data or (), int(args.max_mb * (1 << 20)))
    with tqdm(desc="merges", unit="merge", file=sys.stderr, disable=args.quiet) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        tok = Tokenizer.train(texts, args.vocab_size, progress)
    tok.save(args.out)
    print(f"wrote {args.out}: {tok.vocab_size} ids, sha256 {tok.fingerprint()[:12]}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    """Write a synthetic dataset (shards, index, manifest, tokenizer)."""
    from trainer.data.synthetic import write_synthetic

    write_synthetic(args.out, args.samples, args.per_shard, args.seed, args.vocab_size)
    print(f"wrote {args.samples} samples to {args.out}")
    return 0


def parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    p = argparse.ArgumentParser(prog="python -m trainer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model")
    t.add_argument("--config", default="tiny", help="preset name or YAML path")
    t.add_argument("--engine", choices=["single", "ddp", "fsdp2", "deepspeed"])
    t.add_argument("--zero-stage", type=int, dest="zero_stage")
    t.add_argument("--data", help="dataset version folder")
    t.add_argument("--save-dir", dest="save_dir")
    t.add_argument("--resume", help="'latest' or a step-<n> folder")
    t.add_argument("--metrics-port", type=int, dest="metrics_port")
    t.add_argument("--max-steps", type=int, dest="max_steps")
    t.add_argument("--cache-dir", dest="cache_dir", help="node-local shard cache")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="perplexity of a checkpoint on held-out samples")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--data", help="dataset folder (default: the one it was trained on)")
    e.add_argument("--samples", type=int, default=16, help="first N samples are held out")
    e.add_argument("--out", help="JSON report path")
    e.add_argument("--generate", type=int, default=0, help="reports to generate for ROUGE/BLEU")
    e.add_argument("--max-new-tokens", type=int, default=48, dest="max_new_tokens")
    e.set_defaults(func=cmd_evaluate)

    m = sub.add_parser("metrics", help="seed 7.1 metrics from prediction records (JSONL)")
    m.add_argument(
        "--task", required=True, choices=["classification", "segmentation", "waveform", "text"]
    )
    m.add_argument("--predictions", required=True)
    m.add_argument("--out")
    m.set_defaults(func=cmd_metrics)

    pa = sub.add_parser("params", help="parameter count of a preset")
    pa.add_argument("--config", default="tiny")
    pa.add_argument("--set", action="append", default=[])
    pa.set_defaults(func=cmd_params)

    d = sub.add_parser("ds-config", help="print the DeepSpeed config of a preset")
    d.add_argument("--config", default="70b")
    d.add_argument("--world-size", type=int, default=64)
    d.add_argument("--set", action="append", default=[])
    d.set_defaults(func=cmd_ds_config)

    k = sub.add_parser("tokenizer", help="train the byte-level BPE tokenizer")
    k.add_argument("--input", nargs="+", help="UTF-8 text files")
    k.add_argument("--data", nargs="+", help="dataset version folders: their text members")
    k.add_argument("--max-mb", type=float, default=256.0, dest="max_mb",
                   help="read at most this much text from --data (in sample order)")  # fmt: skip
    k.add_argument("--quiet", action="store_true", help="no progress bar")
    k.add_argument("--vocab-size", type=int, default=8000)
    k.add_argument("--out", required=True)
    k.set_defaults(func=cmd_tokenizer)

    s = sub.add_parser("synth", help="write a synthetic dataset")
    s.add_argument("--out", required=True)
    s.add_argument("--samples", type=int, default=64)
    s.add_argument("--per-shard", type=int, default=16, dest="per_shard")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--vocab-size", type=int, default=512, dest="vocab_size")
    s.set_defaults(func=cmd_synth)
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, set up logging, run the command; config errors exit with code 2."""
    args = parser().parse_args(argv)
    rank = os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == "0" else logging.WARNING,
        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except ConfigError as exc:
        logging.getLogger("trainer").error("configuration error: %s", exc)
        return EXIT_CONFIG_ERROR


if __name__ == "__main__":
    sys.exit(main())
