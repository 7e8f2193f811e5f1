"""The experiment config: one TOML file per experiment, validated, with overrides.

Values only, no logic (STYLE.md). An unknown key or a wrong type is an error that
names the key and the file. `--set section.key=value` overrides any value; the
value is parsed as TOML (so `3`, `0.5`, `true`, `"text"` and `[1, 2]` all work)
and falls back to a plain string.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


class TextSource(_Section):
    """One labelled line file: every line of `path` is one example of class `label`."""

    path: str
    label: str


class EventColumns(_Section):
    """Which columns of an event log hold what (names as in the file's header or JSON keys)."""

    session: str | None = Field("session_id", description="session id; none: user + gap_minutes")
    user: str | None = Field(None, description="user id, to cut sessions by inactivity gap")
    time: str = "timestamp"
    item: str = Field("item_id", description="page or item id: the sequence's tokens")
    event: str | None = Field(None, description="event type, when conversions are events")

    @field_validator("session", "user", "event", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        return None if v == "" else v  # TOML has no null: session = "" means no session column


class PurchaseColumns(_Section):
    """Columns of a purchases file: which session converted, and when."""

    session: str = "session_id"
    time: str = "timestamp"


class ItemMap(_Section):
    """A table that maps each page / item id to the token the model sees (e.g. its category)."""

    path: str
    key: str = "item_id"
    value: str = "category_id"
    delimiter: str = ","


class LogLayout(_Section):
    """How the purchase files read where they differ from the event files; an unset key reads
    as the events' key of the same name (data.clickstream.format, .time_unit, ...)."""

    format: Literal["auto", "csv", "tsv", "jsonl"] | None = None
    delimiter: str | None = Field(None, description="csv only")
    header: bool | None = Field(None, description="csv/tsv: false: the first line is data")
    names: list[str] | None = Field(None, description="the columns of a headerless file, in order")
    null_values: list[str] | None = None
    time_unit: Literal["iso", "s", "ms"] | None = None
    time_zone: str | None = Field(None, description="IANA zone of ISO times without an offset")


class LabelRule(_Section):
    """Labels for a click-only log: a session converts when it reaches one of these items, or an
    item whose category (the item_map value) is one of these. The session is cut before its first
    matching event, as a purchase cuts it: the marking page must not leak into the tokens."""

    item: list[str] = Field(default_factory=list, description="item ids that mark a conversion")
    category: list[str] = Field(default_factory=list, description="item_map values that mark one")


SplitName = Literal["train", "val", "test"]


class ClickstreamConfig(_Section):
    """Event logs → sessions (Jia et al. KDD'19 §4.1, Adobe.com purchase prediction)."""

    events: list[str] | dict[SplitName, list[str]] = Field(
        default_factory=list, description="files or glob patterns; .gz ok; with splits = \"files\" "
                                          "also a table split → files, {train = [...], test = [...]}")
    splits: Literal["random", "files"] = Field(
        "random", description="random: stratified by data.test_fraction / val_fraction; files: each "
                              "event file's split, from the events table or split_pattern")
    split_pattern: str | None = Field(
        None, description="files: regex on a file's name whose group (?P<split>) reads train, val "
                          "(valid, validation, dev) or test")
    # the events' layout; also the purchases' where purchase_layout leaves a key unset
    format: Literal["auto", "csv", "tsv", "jsonl"] = "auto"
    delimiter: str | None = Field(None, description="csv only; default ','")
    header: bool = Field(True, description="csv/tsv: false: the first line is data, columns by `names`")
    names: list[str] = Field(default_factory=list, description="the columns of a headerless file, in order")
    null_values: list[str] = Field(default_factory=lambda: ["", "NA", "null"])
    columns: EventColumns = Field(default_factory=EventColumns)
    time_unit: Literal["iso", "s", "ms"] = Field("iso", description="how the time column reads")
    time_zone: str | None = Field(None, description="IANA zone of ISO times without an offset; none: UTC")
    unused: list[str] = Field(default_factory=list,
                              description="columns of the event/purchase files left on purpose")
    purchases: list[str] = Field(default_factory=list, description="files naming converted sessions")
    purchase_columns: PurchaseColumns = Field(default_factory=PurchaseColumns)
    purchase_layout: LogLayout = Field(default_factory=LogLayout, description="where purchases read "
                                                                             "unlike the events")
    conversion_event: str | None = Field(None, description="event type that marks a conversion")
    label_rule: LabelRule | None = Field(None, description="click-only logs: the items (categories) "
                                                          "whose reach is a conversion")
    gap_minutes: float = Field(0.0, ge=0.0, description="split sessions after this idle time; 0: off")
    item_map: ItemMap | None = Field(None, description="tokens from this map (unmapped ids stay)")
    max_length: int = Field(732, ge=1, description="keep the last L events (paper: max 732)")
    min_length: int = Field(2, ge=1, description="shorter sessions are quarantined")
    embedding_dim: int = Field(120, ge=0, description="Word2Vec page embeddings; 0: none")
    embedding_window: int = Field(5, ge=1)
    embedding_epochs: int = Field(10, ge=1)
    embedding_workers: int = Field(1, ge=1, description="1 keeps the embeddings deterministic")


class SampleTable(_Section):
    """Labelled point samples in long form: one row per sample and date, one column per band."""

    path: str
    id: str = "sample_id"
    label: str = "label"
    date: str = "date"
    lon: str = "longitude"
    lat: str = "latitude"
    bands: list[str] = Field(default_factory=list, description="feature columns, in order")
    unused: list[str] = Field(default_factory=list,
                              description="columns left unused on purpose: declared in the manifest's "
                                          "`unused` record, not warned about")


def _regexes(values: list[str], key: str) -> list[str]:
    """`values` unchanged when each compiles as a regular expression; else the error names the key
    and the pattern as written."""
    import re  # here, not at the top: only these MODIS keys are regular expressions

    for v in values:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"data.modis.{key} = {v} is not a regular expression ({e}): fix it") from None
    return values


class LabelRaster(_Section):
    """A class raster (e.g. the USDA Cropland Data Layer), resampled by nearest neighbour onto the
    grid of every cube (granule tiles and the GeoTIFF cube); only pixels whose value `classes`
    names become labelled sequences."""

    path: str
    classes: dict[str, str] = Field(default_factory=dict, description='raster value → class, {"1" = "corn"}')


class PointLabels(_Section):
    """Labelled points (a CSV, one row per point), each sampled at the nearest pixel of the cube that
    holds it; a point on no cube's grid is quarantined."""

    path: str
    label: str = "label"
    id: str | None = Field(None, description="point id column; none: the table's line number")
    x: str = Field("longitude", description="column of x: longitude, or easting in `crs`")
    y: str = Field("latitude", description="column of y: latitude, or northing in `crs`")
    crs: str = Field("EPSG:4326",
                     description='CRS of x / y (EPSG or PROJ string), or "cube": the cube\'s own')
    date: str | None = Field(None, description="optional date column: a point dated outside the cube's "
                                                "dates is quarantined (its label is another season's)")
    unused: list[str] = Field(default_factory=list,
                              description="columns left unused on purpose (declared, not warned about)")


class ModisConfig(_Section):
    """MODIS tiles → QA-masked time cube (Zarr) and labelled window sequences (Jia et al. §4.3)."""

    granules: list[str] = Field(default_factory=list, description="HDF4-EOS files or glob patterns")
    bands: list[str] = Field(default_factory=lambda: [f"sur_refl_b0{i}" for i in range(1, 8)])
    state_layer: str = Field("sur_refl_state_500m", description="QA bits: cloud 0-1, shadow 2")
    mask_clouds: bool = True
    geotiffs: list[str] = Field(default_factory=list,
                                description="GeoTIFFs or glob patterns: one per date (and band), or "
                                            "multi-band stacks whose bands `band_pattern` names")
    name_pattern: str = Field(r"(?P<year>\d{4})_(?P<doy>\d{3})",
                              description="regex on a GeoTIFF's name: date as (?P<date>YYYY-MM-DD) or "
                                          "(?P<year>)(?P<doy>); optional (?P<band>)")
    band_pattern: str | None = Field(
        None, description="regex on each band's description (or, without one, its tags as "
                          "'KEY=value' joined by spaces): (?P<channel>…) and the date as "
                          "(?P<date>YYYY-MM-DD), (?P<year>)(?P<doy>) or (?P<year>)(?P<month>); a "
                          "band with a channel but no date (nor one in the file name) is static")
    band_names: list[str] = Field(
        default_factory=list, description="in band order, the descriptions of files that have none "
                                          "(nor tags): parsed by band_pattern / static_bands as theirs "
                                          "would be; a file with another band count is quarantined")
    static_bands: list[str] = Field(
        default_factory=list, description="regexes (full match) on band descriptions or channels of "
                                          "undated layers (elevation, slope; kept unscaled): the cube's "
                                          "`static` (static_band, y, x), appended to every sequence step")
    unused: list[str] = Field(default_factory=list,
                              description="regexes (full match) of HDF layers and GeoTIFF bands left "
                                          "unused on purpose: declared in the manifest, not warned about")
    scale: float = Field(1e-4, gt=0.0, description="applied to integer GeoTIFFs (float ones are scaled)")
    composite_days: int = Field(8, ge=1, description="8 for MOD09A1, 16 for MOD13")
    samples: SampleTable | None = None
    labels: LabelRaster | None = None
    points: PointLabels | None = Field(None, description="labelled points sampled at the cubes' pixels")
    window: int = Field(4, ge=1, description="composites per step (4 x 8 days = the paper's 32 days)")
    stride: int = Field(1, ge=1, description="composites between steps")
    ndvi: bool = Field(True, description="add NDVI from red and nir as a feature")
    process_min_mb: float = Field(256.0, ge=0.0,
                                  description="decode in worker processes (local runs, 2+ cores) from this "
                                              "many MB of decoded pixels on; below, one thread")

    @field_validator("name_pattern", "band_pattern")
    @classmethod
    def _pattern(cls, v: str | None, info: Any) -> str | None:
        return v if v is None else _regexes([v], info.field_name)[0]

    @field_validator("static_bands", "unused")
    @classmethod
    def _patterns(cls, v: list[str], info: Any) -> list[str]:
        return _regexes(v, info.field_name)


class ImagesConfig(_Section):
    """Labelled images → pixel shards: an image-folder tree (one sub-folder per class) or the
    UCI handwritten digits that ship inside scikit-learn."""

    source: Literal["folder", "digits"] = Field("folder", description="folder: `root`; digits: sklearn")
    root: str | None = Field(None, description="the tree's root folder (source = folder)")
    class_level: Literal["top", "parent"] = Field(
        "top", description="top: a file's class is its first folder under root (root/CLASS/…); "
                           "parent: the folder that holds it (root/EVENT/CLASS/file, as MediaEval)")
    extensions: list[str] = Field(default_factory=lambda: [".jpg", ".jpeg", ".png"])
    size: int = Field(32, ge=1, description="resized to size x size (digits keep their 8 x 8)")
    channels: Literal[1, 3] = Field(3, description="1: greyscale (Pillow mode L), 3: RGB")
    max_pixels: int = Field(40_000_000, ge=1, description="larger images are quarantined "
                                                          "(decompression bombs)")


class TweetsConfig(_Section):
    """Tweet dumps (text + images) → token and pixel shards (Chen et al. §IV-A/B; pipelines/tweets.py)."""

    format: Literal["crisismmd", "mediaeval", "jsonl"] = Field(
        "crisismmd", description="crisismmd: the annotation TSVs; mediaeval: posts.txt; jsonl: Twitter "
                                 "API v1.1 or v2 objects, one per line")
    files: list[str] = Field(default_factory=list, description="tweet files: paths or globs")
    image_root: str | None = Field(None, description="where the images are; paths and ids resolve "
                                                     "inside it (unset: a text-only dataset)")
    label: Literal["either", "text", "image", "agreed"] = Field(
        "either", description="crisismmd: informative if text or image is (§IV-A), one annotation, "
                              "or rows whose two annotations agree")
    label_key: str = Field("label", description="mediaeval: the label column; jsonl: the label key "
                                                "(dots for nested keys, e.g. meta.label)")
    split: Literal["random", "image", "event", "tweet"] = Field(
        "random", description="random: stratified by row; image / event / tweet: no image (tweet: no "
                              "tweet, event: no event) in two splits")
    max_tokens: int = Field(15, ge=1, description="first words of a tweet kept (§IV-B: 15)")
    embedding_dim: int = Field(100, ge=1, description="word vectors (§IV-B: 100-d GloVe)")
    word_vectors: str | None = Field(None, description="GloVe / word2vec text file; unset: Word2Vec "
                                                       "trained on the train split")
    embedding_window: int = Field(5, ge=1)
    embedding_epochs: int = Field(10, ge=1)
    image_size: int = Field(64, ge=1, description="images resized to size x size RGB (§IV-B: 64)")
    extensions: list[str] = Field(default_factory=lambda: [".jpg", ".jpeg", ".png", ".gif"])
    max_pixels: int = Field(40_000_000, ge=1, description="larger images are quarantined "
                                                          "(decompression bombs)")


class ItemFeatures(_Section):
    """Item content features (pipelines/interactions.py): a matrix keyed by item id (`path`), or
    vectors a pretrained encoder computes from item text (`text`). Exactly one of the two."""

    path: str | None = Field(None, description="the matrix: .npy (N, D), Parquet (id + vector columns) "
                                               "or raw little-endian float32 (N x dim)")
    format: Literal["npy", "parquet", "raw_float32"] = "npy"
    dim: int | None = Field(None, ge=1, description="vector length: required for raw_float32 (the file "
                                                    "holds no shape), checked against npy / parquet")
    id_map: str | None = Field(None, description="'raw item id<TAB>row' lines (RecBole's *.item2index): "
                                                 "the row of each item; unset: row k is item \"k\"")
    id_column: str = Field("item_id", description="parquet / text: the item id column")
    vector_column: str = Field("features", description="parquet: the list<float> vector column")
    text: str | None = Field(None, description="item text file with a header, e.g. RecBole's *.text "
                                               "(item_id:token, text:token_seq), tab-separated")
    text_column: str = Field("text", description="text: the column holding the item's text")
    encoder: str = Field("all-MiniLM-L6-v2", description="text: the sentence encoder (the optional "
                                                         "extra `encoders`), or a local model folder")
    batch_size: int = Field(64, ge=1, description="text: texts per encoder batch")

    @model_validator(mode="after")
    def _one_source(self) -> ItemFeatures:
        if (self.path is None) == (self.text is None):
            raise ValueError("give exactly one of path (a feature matrix) or text (item text to encode)")
        if self.path is not None and self.format == "raw_float32" and self.dim is None:
            raise ValueError("format = \"raw_float32\" needs dim: the file holds no shape")
        return self


class InteractionsConfig(_Section):
    """Implicit feedback → leave-one-out ranking shards, with optional item content features (He et
    al. / Tang et al. AMR §5.1; pipelines/interactions.py)."""

    format: Literal["pairs", "recbole", "recbole_seq"] = Field(
        "pairs", description="pairs: user item [timestamp] lines; recbole: an atomic .inter file with a "
                             "typed header; recbole_seq: user_id, item_id_list (history), item_id rows")
    files: list[str] = Field(default_factory=list, description="interaction files: paths or globs")
    separator: str | None = Field(None, description="field separator; unset: ',' for .csv, else tab")
    header: bool | None = Field(None, description="the first line names the columns; unset: true for "
                                                  "recbole formats, false for pairs")
    names: list[str] = Field(default_factory=list,
                             description="columns of a headerless file; empty: user, item [, timestamp]")
    user_column: str | None = Field(None, description="unset: user (pairs), user_id (recbole)")
    item_column: str | None = Field(None, description="unset: item (pairs), item_id (recbole)")
    timestamp_column: str = Field("timestamp", description="used when the file has it; \"\": ignore")
    item_list_column: str = Field("item_id_list", description="recbole_seq: the history column")
    user_map: str | None = Field(None, description="'raw user id<TAB>token' lines (*.user2index) when "
                                                   "the files hold tokens: the dataset names raw ids")
    item_map: str | None = Field(None, description="'raw item id<TAB>token' lines (*.item2index), as "
                                                   "user_map")
    min_interactions: int = Field(3, ge=1, description="users with fewer distinct items are dropped "
                                                       "(quarantined and counted)")
    features: ItemFeatures | None = None


class HealthConfig(_Section):
    """What a built dataset must have to be trained on (pipelines/health.py)."""

    on_problem: Literal["fail", "warn"] = Field(
        "fail", description="fail: refuse the build; warn: build, with the problems in the manifest")
    min_class_rows: int = Field(1, ge=1, description="rows of each class in each non-empty split")


class DataConfig(_Section):
    """Where the raw data is and how the pipeline turns it into shards."""

    kind: Literal["text", "clickstream", "modis", "images", "tweets", "interactions"] = "text"
    sources: list[TextSource] = Field(default_factory=list)
    encoding: str = Field("utf-8", description="of the text sources: a text codec of Python's")
    output: str = "data/dataset"
    min_count: int = Field(1, ge=1)
    max_vocab: int = Field(50_000, ge=10)
    test_fraction: float = Field(0.5, gt=0.0, lt=1.0)
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    lowercase: bool = True
    tokenizer: Literal["words", "minilm"] = Field(
        "words", description="text: words and punctuation; minilm: all-MiniLM-L6-v2's word pieces in "
                             "[CLS] … [SEP], for model.name = \"encoder_attention\" (extra `pretrained`)")
    part_rows: int = Field(4096, ge=1, description="rows per Parquet part")
    seed: int = 0
    clickstream: ClickstreamConfig = Field(default_factory=ClickstreamConfig)
    modis: ModisConfig = Field(default_factory=ModisConfig)
    images: ImagesConfig = Field(default_factory=ImagesConfig)
    tweets: TweetsConfig = Field(default_factory=TweetsConfig)
    interactions: InteractionsConfig = Field(default_factory=InteractionsConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)

    @field_validator("encoding")
    @classmethod
    def _text_codec(cls, v: str) -> str:
        # checked here, not in every decoding task: an unknown name, or a codec that is not text
        # (rot_13, base64_codec) would raise LookupError for each block of each file
        import codecs

        try:
            info = codecs.lookup(v)
        except (LookupError, ValueError):
            raise ValueError(f"data.encoding = {v!r} is not an encoding Python knows; name a text codec "
                             "such as \"utf-8\", \"cp1252\" or \"latin-1\"") from None
        if not getattr(info, "_is_text_encoding", True):  # what bytes.decode itself checks
            raise ValueError(f"data.encoding = {v!r} is not a text encoding (it turns bytes into bytes); "
                             "name a text codec such as \"utf-8\"")
        return v


class ModelConfig(_Section):
    """The model: Jia et al. KDD'19 LSTM / LSTM-Attention (eq. 4-10), the image CNN, or Chen et al.'s
    Visual-CNN / Text-CNN / multi-modal MMN (§III-A; trainers/models/crisis.py)."""

    name: Literal["lstm", "lstm_attention", "encoder_attention", "image_cnn", "visual_cnn", "text_cnn",
                  "mmn", "pop", "mf_bpr", "vbpr"] = "lstm_attention"
    embedding_dim: int = Field(128, ge=1)
    hidden_dim: int = Field(140, ge=1)
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    bidirectional: bool = Field(
        False, description="also read the sequence backwards (h^t = [→h^t; ←h^t]), so attention on "
                           "early steps sees the whole series; the paper's LSTM is one-way")
    max_length: int = Field(100, ge=1, description="longer sequences keep their first tokens")
    encoder: str = Field("all-MiniLM-L6-v2", description="encoder_attention: a pretrained encoder by name "
                                                         "(extra `pretrained`) or a local model folder")
    finetune: bool = Field(False, description="encoder_attention: train the encoder too (else frozen)")
    encoder_lr: float = Field(2e-5, gt=0.0, description="encoder_attention: the fine-tuned encoder's "
                                                        "learning rate (train.lr is the head's)")
    pretrained_vectors: str | None = Field(None, description="word2vec/GloVe text file to start from")
    init_embeddings: Literal["dataset", "random"] = Field(
        "dataset", description="start from the dataset's embeddings side file when it has one")
    channels: list[int] = Field(default_factory=lambda: [32, 64], min_length=2, max_length=2,
                                description="image_cnn: widths of its two conv blocks")
    activation: Literal["relu", "softplus"] = Field("relu", description="image_cnn: activation")
    text_window: int = Field(2, ge=1, description="text_cnn / mmn: words per convolution window "
                                                  "(Chen et al. §IV-B: 2)")
    text_filters: int = Field(100, ge=1, description="text_cnn / mmn: convolution filters over the "
                                                     "words (Kim 2014: 100)")
    l2: float = Field(0.0, ge=0.0, description="mf_bpr / vbpr: β of AMR eq. 10, the L2 penalty on the "
                                               "triple's embeddings (and E), added once per step")
    feature_scale: Literal["none", "standard", "l2"] = Field(
        "l2", description="vbpr: item content features scaled to unit L2 norm per item (so ε of AMR is "
                          "relative to a feature vector's length), standardised per dimension, or as stored")


class RegimeConfig(_Section):
    """Which adversarial terms build the loss, and their hyper-parameters (trainers/adversarial:
    each term's module lists the keys it reads; a key set that no chosen term reads is an error)."""

    name: str = Field("clean", description='a term or terms joined by "+", e.g. "fgsm+input_gradient"')
    epsilon: float = Field(1.0, ge=0.0, description="radius of the perturbation (in its norm)")
    norm: Literal["l2", "linf"] = Field("l2", description="at / pgd: L2 ball, or L∞ box (sign steps)")
    lam: float = Field(1.0, ge=0.0, description="weight of the adversarial (AT / FGSM / PGD) loss")
    inputs: list[str] = Field(default_factory=list, description="perturbed inputs by name; empty: all")
    filter: Literal["none", "sf", "cat"] = Field(
        "none", description="Selective Filtering (eq. 12) or Conservative AT (eq. 13)")
    keep_ratio: float = Field(0.6, gt=0.0, le=1.0, description="SF: K%, share of samples kept")
    gamma: float = Field(0.2, ge=0.0, description="CAT: weight of attention similarity")
    lam_vat: float = Field(1.0, ge=0.0, description="weight of the VAT loss")
    xi: float = Field(0.1, gt=0.0, description="VAT: finite-difference step of power iteration")
    power_iterations: int = Field(1, ge=1, description="VAT power iterations")
    attention_aware: bool = Field(True, description="VAT/PGD radius α^t·ε per step (eq. 11)")
    transductive: bool = Field(False, description="VAT also on the test inputs, without labels")
    pgd_steps: int = Field(3, ge=1)
    pgd_step_size: float = Field(0.5, gt=0.0, description="PGD step, as a share of epsilon")
    lam_ig: float = Field(1.0, ge=0.0, description="input_gradient: weight of mean_i ‖∇_x ℓ_i‖²")
    ig_method: Literal["double_backprop", "finite_difference"] = "double_backprop"
    fd_step: float = Field(0.01, gt=0.0, description="input_gradient, finite_difference: step h")
    neighbours: int = Field(10, ge=1, description="word_replace: candidates per word, its n nearest "
                                                  "words in the embedding space")
    threshold: float = Field(0.5, description="word_replace: replace only where (w' − w)·η exceeds it")
    schedule: Literal["online", "offline"] = Field(
        "online", description="mmat: online, fresh adversarial examples every batch; offline, the "
                              "paper's Algorithm 1: train, craft once with the trained model, retrain")
    warm_start: bool = Field(
        False, description="train the clean model first, then the regime from its best weights (AMR's "
                           "Algorithm 1 line 1: AMR starts from a trained VBPR; APR from a trained MF-BPR)")


class TrainConfig(_Section):
    """The training loop and its Ray Train scaling."""

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1, description="per worker")
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    grad_clip: float = Field(5.0, ge=0.0, description="0 disables clipping")
    patience: int = Field(3, ge=1, description="epochs without validation gain before stopping")
    metric: Literal["val_accuracy", "val_auc", "val_loss", "val_hr_10", "val_ndcg_10"] = "val_accuracy"
    optimizer: Literal["adam", "adagrad"] = Field("adam", description="Adagrad: the AMR paper's choice")
    eval_negatives: int = Field(999, ge=0, description="ranking: sampled negatives per user scored with "
                                                        "the held-out item (AMR §5.1); 0: rank all items")
    class_weights: bool = Field(False, description="weight the loss by inverse train class frequency")
    amp: bool = Field(False, description="CUDA only: forward passes in bfloat16 autocast")
    workers: int = Field(0, ge=0, description="0: one per available CPU")
    gpus: bool = False
    max_failures: int = Field(2, ge=0)
    storage: str = "runs"
    seed: int = 0


class MlflowConfig(_Section):
    """Tracking: sqlite under ./mlruns by default so the model registry works."""

    tracking_uri: str = "sqlite:///mlruns/mlflow.db"
    experiment: str = "advorch"
    log_model: bool = True


class SpaceSpec(_Section):
    """How Tune draws one config key: exactly one of grid / choice / uniform / loguniform / randint."""

    grid: list[Any] | None = Field(None, description="every value, crossed with the other grids")
    choice: list[Any] | None = Field(None, description="one value at random per sample")
    uniform: list[float] | None = Field(None, min_length=2, max_length=2, description="[low, high]")
    loguniform: list[float] | None = Field(None, min_length=2, max_length=2, description="[low, high]")
    randint: list[int] | None = Field(None, min_length=2, max_length=2, description="[low, high)")

    @model_validator(mode="after")
    def _exactly_one(self) -> SpaceSpec:
        given = [k for k, v in self.__dict__.items() if v is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of grid, choice, uniform, loguniform, randint (got {given})")
        if given[0] in ("grid", "choice") and not getattr(self, given[0]):
            raise ValueError(f"{given[0]} needs at least one value")
        return self

    @property
    def kind(self) -> str:
        return next(k for k, v in self.__dict__.items() if v is not None)


class SweepConfig(_Section):
    """Ray Tune sweep: the search space over `section.key` names and how trials are scheduled."""

    space: dict[str, SpaceSpec] = Field(default_factory=dict)
    scheduler: Literal["asha", "fifo"] = "asha"
    num_samples: int = Field(1, ge=1, description="samples of the space (each grid point that often)")
    max_concurrent: int = Field(0, ge=0, description="0: as many as the cluster's CPUs fit")
    grace_period: int = Field(1, ge=1, description="ASHA: epochs before a trial can be stopped")
    reduction_factor: float = Field(2.0, gt=1.0, description="ASHA: keep 1/factor at each rung")
    register_as: str | None = Field(None, description="registry name of the best model (default: name)")

    @field_validator("space")
    @classmethod
    def _keys_exist(cls, space: dict[str, SpaceSpec]) -> dict[str, SpaceSpec]:
        sections = {"data": DataConfig, "model": ModelConfig, "regime": RegimeConfig,
                    "train": TrainConfig, "mlflow": MlflowConfig}
        for key in space:
            section, _, field = key.partition(".")
            if field not in getattr(sections.get(section), "model_fields", {}):
                raise ValueError(f"{key!r} is not a config key; name one as section.key, "
                                 "e.g. regime.epsilon")
        return space


class ExperimentConfig(_Section):
    """The whole experiment; each section is optional and has defaults."""

    name: str = "experiment"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    regime: RegimeConfig = Field(default_factory=RegimeConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    tune: SweepConfig = Field(default_factory=SweepConfig)

    def with_values(self, values: dict[str, Any]) -> ExperimentConfig:
        """A copy with `section.key` → value set (a Tune trial's draw), validated again."""
        raw = self.model_dump()
        for key, value in values.items():
            node = raw
            *sections, last = key.split(".")
            for part in sections:
                node = node[part]
            node[last] = value
        return ExperimentConfig.model_validate(raw)

    def flat(self) -> dict[str, Any]:
        """The resolved config as `section.key` → value (MLflow params, Tune spaces)."""
        out: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else k, v)
            else:
                out[prefix] = value

        walk("", self.model_dump())
        return out


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and the file."""


def _parse_value(text: str, origin: str, key: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
    except RecursionError:  # tomllib recurses per nesting level
        raise ConfigError(f"{origin}: override {key!r}: the value nests arrays or tables too "
                          "deeply") from None


def _key_path(key: str) -> list[str]:
    """`a.b."c.d"` → ["a", "b", "c.d"], by TOML's own key rules; [] if not a valid key."""
    if "\n" in key or "\r" in key:  # lines of their own ("[a]\n[b]\nc") are TOML, not one key
        return []
    try:
        node: Any = tomllib.loads(f"{key} = 0")
    except tomllib.TOMLDecodeError:
        return []
    parts = []
    while isinstance(node, dict):
        if len(node) != 1:
            return []
        (part, node), = node.items()
        parts.append(part)
    return parts


def _apply_override(raw: dict[str, Any], assignment: str, origin: str) -> None:
    key, sep, value = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{origin}: override {assignment!r} must look like section.key=value")
    parts = _key_path(key.strip())
    if not parts:
        raise ConfigError(f"{origin}: override key {key!r} is not a TOML key (quote dotted names: "
                          'tune.space."regime.epsilon".grid=[1, 2])')
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{origin}: override {key!r}: {part!r} is not a section")
    node[parts[-1]] = _parse_value(value.strip(), origin, key)


def _format_errors(err: ValidationError, origin: str) -> str:
    lines = [f"invalid config {origin}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"  unknown key '{key}' (remove it or check its spelling)")
        else:
            lines.append(f"  key '{key}': {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a TOML experiment config, apply `section.key=value` overrides, validate.

    Raises:
        ConfigError: the file is missing or not TOML, a key is unknown, a value has the
            wrong type; the message names the key and the file.
    """
    origin = str(path) if path else "<defaults>"
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {p} is not valid TOML: {e}") from e
        except UnicodeDecodeError as e:  # TOML files are UTF-8
            raise ConfigError(f"config file {p} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset "
                              f"{e.start}); save it as UTF-8") from None
        except RecursionError:  # tomllib recurses per nesting level
            raise ConfigError(f"config file {p} nests arrays or tables too deeply") from None
    for assignment in overrides or []:
        _apply_override(raw, assignment, f"{origin} (--set)")
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, origin)) from None
