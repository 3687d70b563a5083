"""The classifier record saved with a tag set: enough to tag images added later exactly as the first run did.

A JSON object (the store keeps it as tags/NAME-GGGGGG.tagger.json): labels, mode, top_k, prompt templates,
the model it belongs to, how it was made (zero-shot or taught by examples: method, examples per label,
strength, cross-validated accuracy) and the final float32 weights, offsets and thresholds (base64), so
re-applying it needs neither the examples nor the text encoder.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass

import numpy as np

from classify.scoring import Scoring
from indexer.errors import ModelMismatchError, PixdexError

RECORD_VERSION = 1


def encode_array(a: np.ndarray | None) -> dict | None:
    if a is None:
        return None
    a = np.ascontiguousarray(a, dtype=np.float32)
    return {"dtype": "float32", "shape": list(a.shape),
            "base64": base64.b64encode(a.tobytes()).decode("ascii")}


def decode_array(d: dict | None) -> np.ndarray | None:
    if d is None:
        return None
    if d.get("dtype") != "float32":
        raise PixdexError(f"tagger record: unsupported array dtype {d.get('dtype')!r}")
    return np.frombuffer(base64.b64decode(d["base64"]), np.float32).reshape(d["shape"]).copy()


def tagger_record(head, mode: str, thresholds: np.ndarray | None, top_k: int | None, model: dict) -> dict:
    """The record of a label set or taught classifier (`head`) as used for one tagging run."""
    w, _ = head.weights(mode)
    info = head.info() if hasattr(head, "info") else {"method": "zero-shot", "examples": {}, "strength": None,
                                                      "cv_accuracy": None, "cv_folds": 0}
    sc = head.scoring
    return {
        "version": RECORD_VERSION, "labels": list(head.labels), "mode": mode, "top_k": top_k,
        "templates": list(head.templates),
        "model": {"name": model["name"], "fingerprint": model["fingerprint"]},
        "scoring": {"family": sc.family, "logit_scale": sc.logit_scale, "logit_bias": sc.logit_bias},
        "method": info["method"], "prior": info.get("prior"), "examples": info["examples"],
        "strength": info["strength"],
        "cv_accuracy": info["cv_accuracy"], "cv_folds": info["cv_folds"],
        "weights": encode_array(w), "offsets": encode_array(head.offsets(mode)),
        "thresholds": None if thresholds is None else [float(x) for x in thresholds],
    }


@dataclass
class SavedTagger:
    """A tagger rebuilt from its record: scores through the same kernels as the run that saved it."""

    name: str
    labels: list[str]
    mode: str
    top_k: int | None
    scoring: Scoring
    w: np.ndarray  # [dim, labels] float32, logit scale folded in
    off: np.ndarray | None
    thresholds: np.ndarray | None
    record: dict

    @classmethod
    def from_record(cls, name: str, record: dict) -> SavedTagger:
        if record.get("version", 0) > RECORD_VERSION:
            raise PixdexError(f"tagger {name!r} has record version {record.get('version')}; upgrade pixdex")
        sc = record["scoring"]
        thr = record.get("thresholds")
        return cls(name, list(record["labels"]), record["mode"], record.get("top_k"),
                   Scoring(sc["family"], float(sc["logit_scale"]), sc.get("logit_bias")),
                   decode_array(record["weights"]), decode_array(record.get("offsets")),
                   None if thr is None else np.array(thr, np.float64), record)

    @property
    def embeddings(self) -> np.ndarray:
        """[labels, dim] (only its shape is used: the dimension check)."""
        return self.w.T

    @property
    def templates(self) -> list[str]:
        return list(self.record.get("templates") or [])

    def weights(self, mode: str) -> tuple[np.ndarray, float]:
        self._check(mode)
        return self.w, self.scoring.bias

    def offsets(self, mode: str) -> np.ndarray | None:
        self._check(mode)
        return self.off

    def _check(self, mode: str) -> None:
        if mode != self.mode:
            raise PixdexError(f"tagger {self.name!r} is {self.mode}-label, not {mode}-label")

    def check_model(self, fingerprint: str) -> None:
        mine = self.record["model"]
        if mine["fingerprint"] != fingerprint:
            raise ModelMismatchError(f"tagger {self.name!r} belongs to model '{mine['name']}' (fingerprint "
                                     f"{mine['fingerprint']}), not to fingerprint {fingerprint}")

    def describe(self) -> str:
        r = self.record
        how = r["method"] if r["method"] == "zero-shot" else (
            f"{r['method']}, {sum(r['examples'].values())} examples"
            + (f", cv accuracy {r['cv_accuracy']:.3f}" if r.get("cv_accuracy") is not None else "")
            + (f", strength {r['strength']:g}"
               if r.get("strength") is not None and math.isfinite(r["strength"]) else "")
            + (", label text dropped for a plain probe" if r.get("prior") == "none" else ""))
        return f"{self.name}: {self.mode}-label over {len(self.labels)} labels ({how})"
