"""Estimate the CPU time of a study config from the job times of a study that ran.

    python docs/bench/study_cost.py MEASURED -- [snakemake args of the study to estimate]
    python docs/bench/study_cost.py /work/study -- --configfile config/cpu.yaml

MEASURED is the folder a study ran in (its ``benchmarks/`` and ``results/data/*/meta.json``). Both studies are
planned with ``snakemake -n -p -F`` from the current folder (MEASURED's with its own config). Each measured job
gives a rate, CPU-seconds per image-epoch (epochs from its ``--set epochs=``, images from its dataset's training
split); a planned job is priced at the rate of the same rule and run where that ran, else at the rule's mean
rate, times its own epochs and images. An estimate, not a measurement: jobs of a rule whose cost depends on
more than epochs and images (the mask ratio, the decoder) are priced at their run's rate only where that run
was measured.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

JOB = re.compile(r"^(?:local)?rule (\w+):\n((?:[ S].*\n?)*)", re.M)  # the rule line, then its indented lines


def plan(cwd: Path, args: list[str]) -> list[dict]:
    cmd = [sys.executable, "-m", "snakemake", "-n", "-p", "-F", "--nolock", "--cores", "2", *args]
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed in {cwd}:\n{out.stderr[-2000:]}")
    return parse(out.stdout + out.stderr)


def parse(text: str) -> list[dict]:
    """The jobs of a ``snakemake -n -p`` listing: rule, benchmark file, epochs and data folder."""
    jobs = []
    for rule, body in JOB.findall(text):
        bench = re.search(r"benchmark: (\S+)", body)
        shell = re.search(r"Shell command: (.*)", body)
        if not bench or not shell:
            continue
        epochs = re.findall(r"--set epochs=(\d+)", shell.group(1))
        data = re.search(r"--data (\S+)", shell.group(1))
        dataset = re.search(r"--dataset (\S+)", shell.group(1))
        jobs.append(
            dict(
                rule=rule,
                bench=bench.group(1),
                epochs=int(epochs[-1]) if epochs else 1,
                data=(dataset or data).group(1).strip("'") if (dataset or data) else "",
            )
        )
    return jobs


def images(root: Path, data: str, config_sizes: dict[str, int]) -> int:
    name = Path(data).name
    meta = root / data / "meta.json"
    if meta.is_file():
        splits = json.loads(meta.read_text()).get("splits", {})
        if "train" in splits:
            return int(splits["train"])
    return config_sizes.get(name, 1)


def main(argv: list[str]) -> int:
    if "--" not in argv or argv.index("--") != 1:
        sys.exit(__doc__)
    measured = Path(argv[0])
    if not (measured / "benchmarks").is_dir():
        sys.exit(f"error: {measured}/benchmarks: no such folder (a study that ran)")
    import yaml

    def sizes(configs: list[str]) -> dict[str, int]:
        """Training images per dataset name, from the configs in their merge order."""
        found = {}
        for arg in configs:
            if arg.endswith(".yaml") and Path(arg).is_file():
                for name, spec in (yaml.safe_load(Path(arg).read_text()).get("datasets") or {}).items():
                    if isinstance(spec, dict) and "n_train" in spec:
                        found[name] = int(spec["n_train"])
        return found

    measured_sizes = sizes([str(measured / "config" / "config.yaml")])
    planned_sizes = sizes(["config/config.yaml", *argv[2:]])
    rates: dict[tuple[str, str], list[float]] = defaultdict(list)
    for job in plan(measured, []):
        tsv = measured / job["bench"]
        if tsv.is_file():
            seconds = float(tsv.read_text().splitlines()[-1].split("\t")[0])
            work = job["epochs"] * images(measured, job["data"], measured_sizes)
            rates[(job["rule"], job["bench"])].append(seconds / work)
            rates[(job["rule"], "")].append(seconds / work)
    total: dict[str, list[float]] = defaultdict(list)
    for job in plan(Path.cwd(), argv[2:]):
        rate = rates.get((job["rule"], job["bench"])) or rates.get((job["rule"], ""))
        if not rate:
            print(f"unpriced (no measured {job['rule']} job): {job['bench']}")
            continue
        work = job["epochs"] * images(Path.cwd(), job["data"], planned_sizes)
        total[job["rule"]].append(sum(rate) / len(rate) * work)
    print(f"{'rule':<20}{'jobs':>6}{'CPU-s':>10}")
    for rule, costs in sorted(total.items(), key=lambda kv: -sum(kv[1])):
        print(f"{rule:<20}{len(costs):>6}{sum(costs):>10.0f}")
    cpu = sum(map(sum, total.values()))
    print(
        f"{'total':<20}{sum(map(len, total.values())):>6}{cpu:>10.0f}"
        f"  (wall with 2 one-thread jobs: >= {cpu / 7200:.1f} h)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
