"""Copy a trained policy file into the package as a shipped policy, with the workload
paths of its `training` record made relative to the repository (a run folder records
them as absolute paths, so that a resume finds them from any folder). The tensors and
every other field are copied unchanged; the script checks that by `Policy.digest()`.

    python experiments/studies/prior_generalist/export_policy.py \\
        --policy experiments/studies/prior_generalist/run_h1/evaluated/4000/policy.safetensors \\
        --out agents/policies/prior_generalist.safetensors
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lrpilot.agents.policy_file import Policy, load_policy

ROOT = Path(__file__).resolve().parents[3]  # the repository


def relative_workloads(training: dict) -> dict:
    """The training record with each workload path under the repository made relative."""
    task_space = training["env"]["task_space"]
    workloads = []
    for workload in task_space["workloads"]:
        path = Path(workload)
        if path.is_absolute() and path.is_relative_to(ROOT):
            workload = path.relative_to(ROOT).as_posix()
        workloads.append(workload)
    env = training["env"] | {"task_space": task_space | {"workloads": workloads}}
    return training | {"env": env}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", required=True, help="the trained policy file")
    parser.add_argument("--out", required=True, help="the shipped file to write")
    args = parser.parse_args()
    source = load_policy(args.policy)
    training = relative_workloads(source.metadata["training"])
    shipped = Policy(source.weights, source.metadata | {"training": training})
    path = shipped.save(args.out)
    if load_policy(path).digest() != source.digest():  # the weights or what reads them
        raise SystemExit(f"error: {path} differs from {args.policy} beyond its training record")
    print(path)
    print(json.dumps(training["env"]["task_space"]["workloads"]))


if __name__ == "__main__":
    main()
