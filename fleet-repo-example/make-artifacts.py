#!/usr/bin/env python3
"""Build the example fleet's artifacts, golden files and catalog, deterministically.

The example fleet repository ``retail-eu`` (this directory) refers to four artifacts:

* ``anomaly-model@1.3.0`` and ``anomaly-model@1.4.0-rc1``: a tiny ONNX autoencoder
  (16 -> 64 -> 8 -> 64 -> 16, MatMul/Add/Relu) that outputs one anomaly score per
  input row, the mean squared reconstruction error. 1.4.0-rc1 is "retrained": only
  its output layer differs (two re-fitted sensor columns and the output bias), as
  after fine-tuning, so a binary delta between the two versions is small.
* ``pos-app@2.1.0`` and ``pos-app@2.2.0``: a point-of-sale application as a
  ``.tar.gz`` (``bin/pos-app``, ``etc/pos-app.conf``, ``share/pos-app/...``);
  2.2.0 differs slightly from 2.1.0.

Everything is a pure function of this file: the weights come from an integer hash
formula (not from a random generator whose stream could change between library
versions), the ONNX models pin ``ir_version``, opset, producer name and version, and
the archives pin every entry's mtime (0), owner (0/0), mode and order, and gzip's
mtime (0) and level. Running the script twice gives byte-identical outputs.

The golden files in ``golden/`` (input and expected outputs of the ``onnx`` health
checks) are committed, because they are part of the signed desired state. The
expected outputs are computed with numpy in float64, with every sum taken by
``math.fsum`` (correctly rounded, so independent of BLAS and of summation order),
then rounded to float32, and cross-checked against onnxruntime.

Usage::

    ./make-artifacts.py                    # build; write artifacts to .store/sha256/<digest>
    ./make-artifacts.py --golden           # also (re)write golden/*.npy
    ./make-artifacts.py --write-catalog    # also rewrite artifacts.yaml (sha256, size, url)
    ./make-artifacts.py --check            # write nothing; exit 1 naming what is stale

Exit status: 0 success, 1 a check failed (stale catalog or golden file, or numpy and
onnxruntime disagree), 2 bad usage.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import math
import os
import sys
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent

# --- pinned build parameters (changing any of these changes the artifacts' digests) ---
ONNX_OPSET = 17
ONNX_IR_VERSION = 8  # the IR version that goes with opset 17
PRODUCER_NAME = "edgefleet-example"
PRODUCER_VERSION = "1.0"
GZIP_LEVEL = 9

N_FEATURES = 16
LAYERS = (16, 64, 8, 64, 16)  # autoencoder widths: input, hidden, bottleneck, hidden, output
INPUT_NAME = "features"
OUTPUT_NAME = "anomaly_score"
# Tolerance between the numpy reference and onnxruntime (the fleet's health checks use 1e-4).
ORT_ATOL = 1e-5

MODEL_FILE = "anomaly-model.onnx"
POS_FILE = "pos-app.tar.gz"

GOLDEN_INPUT = "golden/anomaly-in.npy"
GOLDEN_OUTPUT = {"1.3.0": "golden/anomaly-out.npy", "1.4.0-rc1": "golden/anomaly-out-1.4.0.npy"}


@dataclass(frozen=True)
class Artifact:
    """One built artifact, as the catalog describes it."""

    ref: str  # name@version
    file: str
    unpack: str
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def url(self) -> str:
        return f"sha256/{self.sha256}"


# ------------------------------------------------------------------------------------------
# The anomaly model
# ------------------------------------------------------------------------------------------


def _hash_unit(layer: int, i: int, j: int) -> float:
    """A deterministic value in [-1, 1] from integer arithmetic only (a fixed formula)."""
    h = (i * 73856093) ^ (j * 19349663) ^ ((layer + 1) * 83492791)
    h = (h * 2654435761 + 12345) % 4294967296
    return ((h >> 8) % 2001 - 1000) / 1000.0


def _weights(layer: int, rows: int, cols: int) -> np.ndarray:
    """A [rows, cols] float32 weight matrix, scaled like a Glorot-initialised layer."""
    scale = math.sqrt(6.0 / (rows + cols))
    values = [[_hash_unit(layer, i, j) * scale for j in range(cols)] for i in range(rows)]
    return np.array(values, dtype=np.float32)


def _bias(layer: int, n: int) -> np.ndarray:
    return np.array([_hash_unit(layer + 100, 0, j) * 0.05 for j in range(n)], dtype=np.float32)


def model_parameters(version: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Weights and biases of each dense layer of the given model version."""
    params = [
        (_weights(k, LAYERS[k], LAYERS[k + 1]), _bias(k, LAYERS[k + 1]))
        for k in range(len(LAYERS) - 1)
    ]
    if version == "1.4.0-rc1":
        # "Retrained" on the new freezer sensors (features 11 and 12): only the output
        # layer's two columns and the output bias move, by a few percent.
        w, b = params[-1]
        w, b = w.copy(), b.copy()
        for i in range(w.shape[0]):
            for j in (11, 12):
                w[i, j] = np.float32(float(w[i, j]) * 0.9 + _hash_unit(7, i, j) * 0.02)
        for j in range(b.shape[0]):
            b[j] = np.float32(float(b[j]) + 0.01 * (j % 3 - 1))
        params[-1] = (w, b)
    elif version != "1.3.0":
        raise ValueError(f"unknown anomaly-model version {version}")
    return params


def build_model(version: str) -> bytes:
    """The serialized ONNX model of the given version."""
    params = model_parameters(version)
    initializers: list[TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    current = INPUT_NAME
    last = len(params) - 1
    for k, (w, b) in enumerate(params):
        initializers.append(numpy_helper.from_array(w, name=f"dense{k}.weight"))
        initializers.append(numpy_helper.from_array(b, name=f"dense{k}.bias"))
        nodes.append(
            helper.make_node(
                "MatMul", [current, f"dense{k}.weight"], [f"dense{k}.mm"], name=f"dense{k}_matmul"
            )
        )
        out = f"dense{k}.out" if k < last else "reconstruction"
        nodes.append(
            helper.make_node("Add", [f"dense{k}.mm", f"dense{k}.bias"], [out], name=f"dense{k}_add")
        )
        if k < last:
            nodes.append(helper.make_node("Relu", [out], [f"dense{k}.act"], name=f"dense{k}_relu"))
            current = f"dense{k}.act"
    nodes += [
        helper.make_node("Sub", [INPUT_NAME, "reconstruction"], ["residual"], name="residual"),
        helper.make_node("Mul", ["residual", "residual"], ["squared"], name="squared"),
        helper.make_node(
            "ReduceMean", ["squared"], [OUTPUT_NAME], name="score", axes=[1], keepdims=0
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "anomaly_autoencoder",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", N_FEATURES])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch"])],
        initializer=initializers,
        doc_string="Per-row anomaly score: mean squared reconstruction error of an autoencoder.",
    )
    model = helper.make_model(
        graph,
        producer_name=PRODUCER_NAME,
        producer_version=PRODUCER_VERSION,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
        doc_string=f"EdgeFleet example anomaly-model {version}",
    )
    model.ir_version = ONNX_IR_VERSION
    model.model_version = 1
    helper.set_model_props(model, {"name": "anomaly-model", "version": version})
    onnx.checker.check_model(model, full_check=True)
    return bytes(model.SerializeToString())


def golden_input() -> np.ndarray:
    """Four rows of 16 sensor readings; the last row carries two spikes (an anomaly)."""
    rows = []
    for r in range(4):
        # A triangle wave with a per-row phase: exact binary fractions, no transcendental maths.
        row = [(abs((f + 3 * r) % 8 - 4) - 2) / 4.0 for f in range(N_FEATURES)]
        rows.append(row)
    rows[3][5] += 1.5
    rows[3][12] -= 1.25
    return np.array(rows, dtype=np.float32)


def reference_scores(version: str, x: np.ndarray) -> np.ndarray:
    """The model's output computed with numpy in float64, every sum by ``math.fsum``."""
    params = [(w.astype(np.float64), b.astype(np.float64)) for w, b in model_parameters(version)]
    scores = []
    for row32 in x:
        row = row32.astype(np.float64)
        h = row
        for k, (w, b) in enumerate(params):
            products = h[:, None] * w  # elementwise: exactly rounded, no BLAS
            h = np.array([math.fsum([*products[:, j], b[j]]) for j in range(w.shape[1])])
            if k < len(params) - 1:
                h = np.maximum(h, 0.0)
        residual = row - h
        scores.append(math.fsum(residual * residual) / N_FEATURES)
    return np.array(scores, dtype=np.float32)


def onnxruntime_scores(model: bytes, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort  # imported late: only this cross-check needs it

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    (out,) = session.run([OUTPUT_NAME], {INPUT_NAME: x})
    return np.asarray(out)


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(array), version=(1, 0), allow_pickle=False)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------
# The point-of-sale application
# ------------------------------------------------------------------------------------------

POS_SCRIPT = r"""#!/bin/sh
# pos-app {version}: point-of-sale front end of the retail-eu stores (EdgeFleet example payload).
# The agent unpacks this archive into a bank; the service runs it through the bank's
# `current` link, e.g. /var/lib/edgefleet/components/pos-app/current/bin/pos-app serve
set -eu

VERSION={version}
HERE=$(CDPATH= cd -- "$(dirname -- "$0")/.." && pwd)
CONF=${{POS_APP_CONF:-$HERE/etc/pos-app.conf}}
SHARE=$HERE/share/pos-app

conf() {{
    # conf KEY: print the value of KEY from the configuration file
    sed -n "s/^$1[[:space:]]*=[[:space:]]*//p" "$CONF" | tail -n 1
}}

fail() {{
    echo "pos-app: $*" >&2
    exit 1
}}

self_test() {{
    [ -r "$CONF" ] || fail "cannot read $CONF"
    [ "$(conf currency)" = EUR ] || fail "currency must be EUR, found '$(conf currency)'"
    [ -n "$(conf store_locale)" ] || fail "store_locale is not set in $CONF"
    for f in {share_files}; do
        [ -r "$SHARE/$f" ] || fail "missing $SHARE/$f"
    done
    locale=$(conf store_locale)
    [ -r "$SHARE/locales/$locale.txt" ] || fail "no messages for locale $locale"
{extra_checks}    echo "pos-app $VERSION: self-test passed"
}}

case "${{1:-serve}}" in
    --version) echo "pos-app $VERSION" ;;
    --self-test) self_test ;;
    serve)
        self_test >/dev/null
        echo "pos-app $VERSION: serving till $(conf till_id) on port $(conf listen_port)"
        while :; do sleep 3600; done
        ;;
    *) fail "usage: pos-app [serve|--self-test|--version]" ;;
esac
"""

POS_CONF = """# /etc/pos-app.conf shipped with pos-app {version}.
# Store-specific values (till_id, store_locale) are overridden by the store's
# provisioning through POS_APP_CONF; these are the fleet defaults.
currency = EUR
store_locale = en
till_id = till-01
listen_port = 8443
receipt_printer = /dev/usb/lp0
receipt_width = 42
offline_queue_max = 5000
offline_queue_dir = /var/lib/pos-app/queue
tse_required = auto
{extra_conf}"""

POS_MESSAGES: dict[str, list[tuple[str, str]]] = {
    "en": [
        ("welcome", "Welcome!"),
        ("total", "Total"),
        ("vat", "VAT"),
        ("cash", "Cash"),
        ("card", "Card"),
        ("change", "Change"),
        ("thanks", "Thank you for your visit"),
        ("offline", "Offline: payments are queued"),
        ("void", "Void"),
        ("refund", "Refund"),
        ("loyalty", "Loyalty points"),
        ("receipt", "Receipt"),
    ],
    "de": [
        ("welcome", "Willkommen!"),
        ("total", "Summe"),
        ("vat", "MwSt."),
        ("cash", "Bar"),
        ("card", "Karte"),
        ("change", "Rückgeld"),
        ("thanks", "Vielen Dank für Ihren Einkauf"),
        ("offline", "Offline: Zahlungen werden zwischengespeichert"),
        ("void", "Storno"),
        ("refund", "Erstattung"),
        ("loyalty", "Treuepunkte"),
        ("receipt", "Beleg"),
    ],
    "fr": [
        ("welcome", "Bienvenue !"),
        ("total", "Total"),
        ("vat", "TVA"),
        ("cash", "Espèces"),
        ("card", "Carte"),
        ("change", "Rendu"),
        ("thanks", "Merci de votre visite"),
        ("offline", "Hors ligne : paiements en attente"),
        ("void", "Annulation"),
        ("refund", "Remboursement"),
        ("loyalty", "Points fidélité"),
        ("receipt", "Ticket"),
    ],
    "nl": [
        ("welcome", "Welkom!"),
        ("total", "Totaal"),
        ("vat", "Btw"),
        ("cash", "Contant"),
        ("card", "Pin"),
        ("change", "Wisselgeld"),
        ("thanks", "Bedankt voor uw bezoek"),
        ("offline", "Offline: betalingen worden bewaard"),
        ("void", "Storno"),
        ("refund", "Terugbetaling"),
        ("loyalty", "Spaarpunten"),
        ("receipt", "Bon"),
    ],
}

POS_TAX_RATES = """country,rate_id,percent,description
DE,standard,19.0,Regelsteuersatz
DE,reduced,7.0,ermäßigter Steuersatz (Lebensmittel)
FR,standard,20.0,taux normal
FR,intermediate,10.0,taux intermédiaire
FR,reduced,5.5,taux réduit (produits alimentaires)
FR,super-reduced,2.1,taux particulier
NL,standard,21.0,algemeen tarief
NL,reduced,9.0,verlaagd tarief (voedingsmiddelen)
"""

POS_RECEIPT = """{{store_name}}
{{store_address}}
{{line}}
{{#items}}
{{name:<28}} {{qty:>3}} {{amount:>9}}
{{/items}}
{{line}}
{{msg.total:<28}}     {{total:>9}}
{{#vat}}
{{msg.vat}} {{rate}}%{{base:>20}} {{tax:>9}}
{{/vat}}
{{payment}}
{{msg.thanks}}
TSE {{tse_serial}} {{tse_signature_counter}}
"""

POS_CHANGELOG = {
    "2.1.0": [
        "queue card payments while the store is offline (offline_queue_max)",
        "French and Dutch receipts",
        "TSE (KassenSichV) signature on German receipts",
    ],
    "2.2.0": [
        "contactless limit configurable per country (contactless_limit_eur)",
        "loyalty points shown on the receipt",
        "faster start: templates parsed lazily",
    ],
}


POS_PRODUCTS = (
    "apples",
    "bananas",
    "pears",
    "grapes",
    "tomatoes",
    "cucumbers",
    "carrots",
    "onions",
    "potatoes",
    "lettuce",
    "milk",
    "butter",
    "yoghurt",
    "cheese",
    "eggs",
    "bread",
    "baguette",
    "croissant",
    "coffee",
    "tea",
    "orange-juice",
    "water",
    "sparkling-water",
    "pasta",
    "rice",
    "flour",
    "sugar",
    "salt",
    "olive-oil",
    "frozen-peas",
    "frozen-pizza",
    "ice-cream",
)
POS_PACKS = ("single", "pack-4", "pack-6", "kg")


def pos_price_list(version: str) -> str:
    """A sample price look-up (PLU) table shipped for offline pricing; a pure formula."""
    lines = ["plu,ean,product,pack,price_eur,vat_class\n"]
    for n, (product, pack) in enumerate((p, k) for p in POS_PRODUCTS for k in POS_PACKS):
        plu = 1000 + n
        ean = f"40{(plu * 7919) % 10**10:010d}"  # in-store EAN-13 prefix 40, then a check digit
        ean += str(-sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(ean)) % 10)
        cents = 49 + (n * 37) % 900
        if version == "2.2.0" and n % 17 == 5:
            cents += 10  # the autumn price update that ships with 2.2.0
        vat = "reduced" if product not in ("coffee", "water", "sparkling-water") else "standard"
        lines.append(f"{plu},{ean},{product},{pack},{cents // 100}.{cents % 100:02d},{vat}\n")
    return "".join(lines)


def pos_files(version: str) -> dict[str, tuple[bytes, int]]:
    """path -> (content, mode) of the pos-app archive of the given version."""
    if version not in ("2.1.0", "2.2.0"):
        raise ValueError(f"unknown pos-app version {version}")
    newer = version == "2.2.0"
    locales = ["de", "en", "fr", "nl"]
    share_files = ["receipt-template.txt", "tax-rates.csv", "plu-sample.csv", "VERSION"]
    extra_checks = ""
    extra_conf = ""
    messages = {loc: list(POS_MESSAGES[loc]) for loc in locales}
    if newer:
        extra_checks = (
            '    [ "$(conf contactless_limit_eur)" -gt 0 ] 2>/dev/null'
            ' || fail "contactless_limit_eur must be a positive number"\n'
        )
        extra_conf = "contactless_limit_eur = 50\nshow_loyalty_points = yes\n"
        contactless = {
            "en": "Contactless",
            "de": "Kontaktlos",
            "fr": "Sans contact",
            "nl": "Contactloos",
        }
        for loc in locales:
            messages[loc].append(("contactless", contactless[loc]))
    files: dict[str, tuple[bytes, int]] = {
        "bin/pos-app": (
            POS_SCRIPT.format(
                version=version, share_files=" ".join(share_files), extra_checks=extra_checks
            ).encode(),
            0o755,
        ),
        "etc/pos-app.conf": (
            POS_CONF.format(version=version, extra_conf=extra_conf).encode(),
            0o644,
        ),
        "share/pos-app/VERSION": (f"{version}\n".encode(), 0o644),
        "share/pos-app/tax-rates.csv": (POS_TAX_RATES.encode(), 0o644),
        "share/pos-app/plu-sample.csv": (pos_price_list(version).encode(), 0o644),
        "share/pos-app/receipt-template.txt": (POS_RECEIPT.encode(), 0o644),
    }
    changelog = [f"pos-app {version}\n"]
    for v in sorted(POS_CHANGELOG, reverse=True):
        if v > version:
            continue
        changelog.append(f"\n{v}\n" + "".join(f"  * {item}\n" for item in POS_CHANGELOG[v]))
    files["share/pos-app/CHANGELOG"] = ("".join(changelog).encode(), 0o644)
    for loc in locales:
        text = "".join(f"{key}={value}\n" for key, value in messages[loc])
        files[f"share/pos-app/locales/{loc}.txt"] = (text.encode(), 0o644)
    return files


def build_tarball(files: dict[str, tuple[bytes, int]]) -> bytes:
    """A reproducible .tar.gz: sorted entries, directories included, mtime 0, owner 0:0."""
    dirs: set[str] = set()
    for path in files:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    entries = sorted([(d, None) for d in dirs] + [(p, files[p]) for p in files])
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, item in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if item is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                content, mode = item
                info.type = tarfile.REGTYPE
                info.mode = mode
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    out = io.BytesIO()
    with gzip.GzipFile(
        filename="", mode="wb", fileobj=out, mtime=0, compresslevel=GZIP_LEVEL
    ) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


# ------------------------------------------------------------------------------------------
# The catalog
# ------------------------------------------------------------------------------------------

CATALOG_TEMPLATE = """\
# artifacts.yaml: every artifact this fleet may deploy, by name@version.
#
# GENERATED by make-artifacts.py --write-catalog from the template inside that script;
# edit the template there, not this file, or `make-artifacts.py --check` will complain.
#
# `url` is relative to each of the fleet's artifactSources (fleet.yaml), tried in
# order: the bytes live at <source>sha256/<digest>, content-addressed, so the same
# store can serve several fleets and a mirror on a USB stick needs no rewriting.
# The agent stops reading at `size` bytes and refuses anything whose SHA-256 differs.
apiVersion: edgefleet/v1
kind: ArtifactCatalog
metadata:
  name: retail-eu
spec:
  artifacts:
    # The shelf/freezer anomaly model every node runs (see fleet.yaml).
    anomaly-model@1.3.0:
      file: {anomaly_model_1_3_0_file}   # the name inside the bank
      sha256: "{anomaly_model_1_3_0_sha256}"
      size: {anomaly_model_1_3_0_size}
      url: {anomaly_model_1_3_0_url}
      unpack: {anomaly_model_1_3_0_unpack}
      description: >-
        Autoencoder over 16 shelf and freezer sensor readings; outputs one anomaly
        score per row. Production model since 2026-09.
    # Release candidate, only on the canary ring (groups/canary.yaml) and on nodes
    # that opt in. Its output layer was re-fitted for the new freezer sensors, so its
    # health check has its own expected output (golden/anomaly-out-1.4.0.npy).
    anomaly-model@1.4.0-rc1:
      file: {anomaly_model_1_4_0_rc1_file}
      sha256: "{anomaly_model_1_4_0_rc1_sha256}"
      size: {anomaly_model_1_4_0_rc1_size}
      url: {anomaly_model_1_4_0_rc1_url}
      unpack: {anomaly_model_1_4_0_rc1_unpack}
      description: >-
        1.3.0 with the output layer re-fitted on sensors 11 and 12 (new freezer
        probes). Release candidate.
    # The point-of-sale application, unpacked into the bank (bin/, etc/, share/).
    pos-app@2.1.0:
      file: {pos_app_2_1_0_file}
      sha256: "{pos_app_2_1_0_sha256}"
      size: {pos_app_2_1_0_size}
      url: {pos_app_2_1_0_url}
      unpack: {pos_app_2_1_0_unpack}   # extracted safely: no absolute paths, no '..', no links
      description: Point-of-sale front end, current stable release.
    pos-app@2.2.0:
      file: {pos_app_2_2_0_file}
      sha256: "{pos_app_2_2_0_sha256}"
      size: {pos_app_2_2_0_size}
      url: {pos_app_2_2_0_url}
      unpack: {pos_app_2_2_0_unpack}
      description: >-
        Point-of-sale front end with per-country contactless limits and loyalty
        points on receipts; piloted on canary stores (groups/pos-pilot.yaml).
"""


def _key(ref: str) -> str:
    return ref.replace("@", "_").replace("-", "_").replace(".", "_")


def render_catalog(artifacts: Sequence[Artifact]) -> str:
    values: dict[str, object] = {}
    for a in artifacts:
        k = _key(a.ref)
        values.update(
            {
                f"{k}_file": a.file,
                f"{k}_sha256": a.sha256,
                f"{k}_size": a.size,
                f"{k}_url": a.url,
                f"{k}_unpack": a.unpack,
            }
        )
    return CATALOG_TEMPLATE.format(**values)


# ------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Build:
    artifacts: list[Artifact]
    golden: dict[str, bytes]  # repository-relative path -> .npy bytes


def build_all() -> Build:
    """Build every artifact and golden file in memory; cross-check the model outputs."""
    artifacts: list[Artifact] = []
    x = golden_input()
    golden = {GOLDEN_INPUT: npy_bytes(x)}
    for version in ("1.3.0", "1.4.0-rc1"):
        model = build_model(version)
        expected = reference_scores(version, x)
        actual = onnxruntime_scores(model, x)
        if actual.shape != expected.shape or not np.allclose(
            actual, expected, rtol=0, atol=ORT_ATOL
        ):
            raise SystemExit(
                f"make-artifacts: anomaly-model@{version}: onnxruntime and the numpy reference "
                f"disagree beyond atol {ORT_ATOL}:\n  numpy       {expected!r}\n"
                f"  onnxruntime {actual!r}\nthe model or the reference is wrong; nothing written"
            )
        golden[GOLDEN_OUTPUT[version]] = npy_bytes(expected)
        artifacts.append(Artifact(f"anomaly-model@{version}", MODEL_FILE, "none", model))
    a13, a14 = golden[GOLDEN_OUTPUT["1.3.0"]], golden[GOLDEN_OUTPUT["1.4.0-rc1"]]
    if a13 == a14:
        raise SystemExit("make-artifacts: both model versions give the same golden output")
    for version in ("2.1.0", "2.2.0"):
        artifacts.append(
            Artifact(f"pos-app@{version}", POS_FILE, "tar", build_tarball(pos_files(version)))
        )
    return Build(artifacts, golden)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> bool:
    """Write ``data`` to ``path`` atomically; return False if it already held exactly that."""
    if path.is_file() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        Path(tmp).chmod(mode)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def check(build: Build, repo: Path) -> list[str]:
    """Problems between what was built and what the repository holds, one line each."""
    problems: list[str] = []
    catalog_path = repo / "artifacts.yaml"
    try:
        catalog = yaml.safe_load(catalog_path.read_text(encoding="utf-8")) or {}
        entries = (catalog.get("spec") or {}).get("artifacts") or {}
    except (OSError, yaml.YAMLError) as exc:
        problems.append(f"artifacts.yaml: cannot read: {exc}")
        entries = {}
    for a in build.artifacts:
        entry = entries.get(a.ref)
        if not isinstance(entry, dict):
            if entries or not problems:
                problems.append(f"artifacts.yaml: {a.ref}: missing; run --write-catalog")
            continue
        for field, want in (
            ("sha256", a.sha256),
            ("size", a.size),
            ("url", a.url),
            ("file", a.file),
            ("unpack", a.unpack),
        ):
            if entry.get(field) != want:
                problems.append(
                    f"artifacts.yaml: {a.ref}: {field} is {entry.get(field)!r}, the build gives "
                    f"{want!r}; run --write-catalog"
                )
    for rel, data in sorted(build.golden.items()):
        path = repo / rel
        if not path.is_file():
            problems.append(f"{rel}: missing; run --golden")
        elif path.read_bytes() != data:
            problems.append(f"{rel}: differs from what the build gives; run --golden")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build the example fleet's artifacts, golden files and catalog, "
        "deterministically.",
    )
    parser.add_argument(
        "--store",
        type=Path,
        default=HERE / ".store",
        help="artifact store; artifacts go to STORE/sha256/<digest> "
        "(default: .store next to this script)",
    )
    parser.add_argument("--golden", action="store_true", help="(re)write golden/*.npy")
    parser.add_argument(
        "--write-catalog",
        action="store_true",
        help="rewrite artifacts.yaml (sha256, size, url) from the built artifacts",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 naming every stale catalog entry or golden file",
    )
    args = parser.parse_args(argv)
    if args.check and (args.golden or args.write_catalog):
        parser.error("--check writes nothing: do not combine it with --golden or --write-catalog")

    build = build_all()
    say: Callable[[str], None] = print

    if args.check:
        problems = check(build, HERE)
        for p in problems:
            print(f"make-artifacts: {p}", file=sys.stderr)
        if problems:
            return 1
        say(
            f"ok: {len(build.artifacts)} artifacts match artifacts.yaml, "
            f"{len(build.golden)} golden files are current"
        )
        return 0

    store: Path = args.store
    for a in build.artifacts:
        wrote = write_atomic(store / "sha256" / a.sha256, a.data, 0o444)
        say(
            f"{'wrote' if wrote else 'kept '} {a.ref:<24} {a.size:>6} bytes  "
            f"{store / 'sha256' / a.sha256}"
        )
    if args.golden:
        for rel, data in sorted(build.golden.items()):
            wrote = write_atomic(HERE / rel, data)
            say(f"{'wrote' if wrote else 'kept '} {rel}")
    if args.write_catalog:
        wrote = write_atomic(HERE / "artifacts.yaml", render_catalog(build.artifacts).encode())
        say(f"{'wrote' if wrote else 'kept '} artifacts.yaml")
    stale = check(build, HERE)
    for p in stale:
        print(f"make-artifacts: warning: {p}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
