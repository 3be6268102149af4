"""Do a GAN's samples read as digits?  A classifier trained apart judges them.

    python benchmarks/gan_quality.py --gan RUN [--classifier RUN] [--count 1000] [--seed 0]
                                     [--model examples/gan.net] [--force]

Draws `--count` samples from the GAN run's weights with `netlang sample` (the command line, as
a user would), has an MNIST classifier predict each one, and prints the mean top-class
probability and the share of samples given to each class.  The goal of examples/gan.net
(issue 12): mean confidence at least 0.9, and every class at least 4% of the samples (no
mode left out).  Without `--classifier`, the script first trains one with `netlang train
examples/lenet5.net --data mnist` (its own 12-epoch recipe, 99.2% test accuracy) into
runs/gan_quality_lenet5 and reuses it on later calls.  A convolutional judge, as is usual for
MNIST GANs: a 3-epoch MLP (97.7%) is less sure of real digits too (0.971 against 0.991).  The exit status is 0 when both goals are met, 1
otherwise.  As a yardstick, it also prints the classifier's mean confidence on the 10,000
real MNIST test digits: what the samples would score if they were as clear as real digits.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

import netlang
from netlang.data import load_dataset

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CLASSIFIER_MODEL = os.path.join(ROOT, "examples", "lenet5.net")
CLASSIFIER_RUN = os.path.join(ROOT, "runs", "gan_quality_lenet5")
CONFIDENCE_GOAL = 0.9
CLASS_SHARE_GOAL = 0.04


def netlang_cli(*argv: str) -> None:
    """Run `netlang ARGV...` with this checkout's package; stop on failure."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = [sys.executable, "-c", "import sys; from netlang.cli import main; "
               "sys.exit(main(sys.argv[1:]))", *argv]
    result = subprocess.run(command, env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"netlang {' '.join(argv)} failed (exit status {result.returncode})")


def classifier_run(given: str | None) -> str:
    """The classifier's run directory: `given`, else the default one, trained if absent."""
    if given is not None:
        return given
    if not os.path.exists(os.path.join(CLASSIFIER_RUN, "summary.json")):
        print(f"training the classifier: {os.path.relpath(CLASSIFIER_MODEL)} into "
              f"{os.path.relpath(CLASSIFIER_RUN)}")
        netlang_cli("train", CLASSIFIER_MODEL, "--data", "mnist", "--out", CLASSIFIER_RUN,
                    "--force", "-q")
    return CLASSIFIER_RUN


def judge(probabilities: np.ndarray) -> tuple[float, np.ndarray]:
    """(mean top-class probability, each class's share of the samples)."""
    top = probabilities.argmax(axis=1)
    shares = np.bincount(top, minlength=probabilities.shape[1]) / len(top)
    return float(probabilities.max(axis=1).mean()), shares


def main(argv=None) -> int:
    """Sample, classify, print the figures; 0 when the goals are met."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gan", required=True, help="the GAN's run directory")
    parser.add_argument("--model", default=os.path.join(ROOT, "examples", "gan.net"))
    parser.add_argument("--classifier", help="a classifier's run directory (MNIST, 28×28×1)")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true",
                        help="sample although the .net file changed since the GAN's run")
    args = parser.parse_args(argv)
    classifier = netlang.load(classifier_run(args.classifier))
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "samples.npy")
        netlang_cli("sample", args.model, "--weights", args.gan, "--count", str(args.count),
                    "--seed", str(args.seed), "-o", path, *(["--force"] if args.force else []))
        samples = np.load(path)
    images = samples.reshape(len(samples), 28, 28, 1)   # the classifier's input shape
    confidence, shares = judge(classifier.predict(images))
    real_confidence, _ = judge(classifier.predict(load_dataset("mnist").x_test))
    met = confidence >= CONFIDENCE_GOAL and shares.min() >= CLASS_SHARE_GOAL
    print(f"{len(samples)} samples of {args.gan} (seed {args.seed}), judged by "
          f"{classifier_run(args.classifier)}")
    print(f"mean top-class confidence: {confidence:.3f} (goal ≥ {CONFIDENCE_GOAL}; "
          f"the same classifier on the real test digits: {real_confidence:.3f})")
    print("class shares: " + "  ".join(f"{digit}: {share:.1%}"
                                       for digit, share in enumerate(shares))
          + f"   (goal: each ≥ {CLASS_SHARE_GOAL:.0%}; smallest {shares.min():.1%})")
    print("goal met" if met else "goal not met")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
