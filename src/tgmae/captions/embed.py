"""Frozen text embeddings of captions, computed once and cached (`tgmae embed-captions`).

The cache is one safetensors file, written atomically:
  `embeddings` float32 [N, D]  L2-normalised projected text embeddings (CLIP `text_embeds`);
  `keys`       uint8 [N, 16]   first 16 bytes of sha256(utf-8 text) of each row's caption;
metadata `model` (hub id or absolute path), `config_hash`, `weights` (fingerprint) and `pooling`.
A cache of another model, other weights or pooling, or a torn one, is refused (or, with
`rebuild=True`, started anew); a file that is not such a cache is never replaced.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from tgmae.atomic import atomic_path, remove_stale_temps
from tgmae.hub import (
    load_pretrained,
    model_name,
    quiet_transformers,
    same_model as hub_same_model,
    weights_fingerprint,
)
from tgmae.captions.pooling import pool_tokens, sentence_pooling
from tgmae.errors import UserError
from tgmae.locks import check_kind, hold

CACHE_FORMAT = "tgmae-text-embeddings/1"
# the poolings read right before caches recorded theirs (others, e.g. lasttoken, were read as mean)
LEGACY_POOLINGS = ("cls", "max", "mean")
WRITE_WAIT_S = 1800.0  # how long a run waits for another process that is filling the same cache
_VOLATILE_CONFIG_KEYS = {"transformers_version", "_name_or_path", "_commit_hash", "torch_dtype", "dtype",
                         "_attn_implementation_autoset", "_attn_implementation", "architectures"}


class EmbeddingCacheError(RuntimeError, UserError):
    """A cache file is unreadable, or belongs to another model; the message says what to do."""


class ForeignFileError(EmbeddingCacheError):
    """The cache path holds a file that is not a text-embedding cache (a model's weights, a data
    set's CSV list, an empty file): never replaced, `rebuild` or not."""


class DamagedCacheError(EmbeddingCacheError):
    """The cache path holds a cache of ours (its header names `CACHE_FORMAT`) whose data cannot be
    read: `rebuild` starts it anew."""


def _safetensors_header(path: Path) -> Optional[dict]:
    """The JSON header of a safetensors file (8-byte little-endian length, then that many bytes of
    a JSON object, at most 100 MB as safetensors allows), or None when `path` does not start so."""
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else 0
        if not 2 <= n <= min(path.stat().st_size - 8, 100_000_000):
            return None
        try:
            header = json.loads(f.read(n))
        except ValueError:  # UnicodeDecodeError too
            return None
    return header if isinstance(header, dict) else None


def text_key(text: str) -> bytes:
    """16-byte key of a caption text (sha256 prefix)."""
    return hashlib.sha256(text.encode("utf-8")).digest()[:16]


def _config_hash(config: Any) -> str:
    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items() if k not in _VOLATILE_CONFIG_KEYS}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    text = json.dumps(clean(config.to_dict()), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class ModelIdentity:
    """Which text model made a set of embeddings: its name/path, a hash of its config, a
    fingerprint of its files (`tgmae.hub.weights_fingerprint`: weights, config, tokenizer; "" = not
    known) and the sentence pooling its files name (`tgmae.captions.pooling.sentence_pooling`;
    models with text features of their own, CLIPs, do not use it; "" = a cache written before
    caches recorded it)."""

    model: str
    config_hash: str
    weights: str = ""
    pooling: str = ""

    @classmethod
    def of(cls, name_or_path: str, setting: str = "") -> "ModelIdentity":
        """Reads the config and the weights' fingerprint (its files hashed once, then remembered by
        `tgmae.hub`; no model is built).
        setting: the key or flag that named the model, named in ModelUnavailableError."""
        from transformers import AutoConfig

        config = load_pretrained(AutoConfig.from_pretrained, name_or_path, what="CLIP model config", setting=setting)
        refuse_captioner(config, name_or_path, setting)
        return cls(model_name(name_or_path), _config_hash(config), weights_fingerprint(name_or_path) or "",
                   sentence_pooling(name_or_path, setting))

    def same_pooling(self, cached: "ModelIdentity") -> bool:
        """Whether a cache's pooling is this model's; a cache that predates the record is taken as
        pooled alike when tgmae then read this pooling right (`LEGACY_POOLINGS`)."""
        return cached.pooling == self.pooling or (not cached.pooling and self.pooling in LEGACY_POOLINGS)


# heads of image-to-text generators (BLIP / BLIP-2 / GIT / LLaVA captioners): their checkpoints hold a
# text *decoder*, not the text encoder + projection that AutoModel would build (with random weights)
_GENERATOR_HEADS = ("ForConditionalGeneration", "ForImageTextToText", "ForCausalLM", "ForVision2Seq")


def refuse_captioner(config: Any, name_or_path: str, setting: str = "") -> None:
    """SettingsError (one line naming `setting` and the model's kind) when `config` is an image
    captioner's (a vision part and a generator head in config.json's architectures, or a
    vision-encoder-decoder): embedding texts with it would use weights its checkpoint lacks."""
    from tgmae.errors import SettingsError

    heads = [a for a in (getattr(config, "architectures", None) or []) if a.endswith(_GENERATOR_HEADS)]
    multimodal = hasattr(config, "vision_config") or config.model_type == "vision-encoder-decoder"
    if multimodal and (heads or config.model_type == "vision-encoder-decoder"):
        kind = heads[0] if heads else config.model_type
        by = f" ({setting})" if setting else ""
        raise SettingsError(f"{name_or_path!r}{by} is an image captioner ({config.model_type}: {kind}), not a text "
                            f"encoder: give {setting or 'it'} a CLIP (hub id or folder with a saved CLIPModel) "
                            "or another text model; a captioner goes to `tgmae caption --model`")


# the way out of a cache built by another text model, for a cache a user named (`tgmae embed-captions`,
# captions.embedding_cache); a command that keeps a cache of its own passes its own (`embed_texts`)
REBUILD_WAY_OUT = "Use another cache path, delete the file, or rebuild it (`tgmae embed-captions ... --rebuild`)."


class EmbeddingCache:
    """Caption text -> embedding rows for one model. Rows: [N, D] float32, L2-normalised."""

    def __init__(self, identity: ModelIdentity, embeddings: Optional[torch.Tensor] = None,
                 keys: Sequence[bytes] = ()):
        self.identity = identity
        self.embeddings = embeddings if embeddings is not None else torch.zeros(0, 0)
        self._row: dict[bytes, int] = {k: i for i, k in enumerate(keys)}
        if len(self._row) != self.embeddings.shape[0]:
            raise EmbeddingCacheError("cache keys and embedding rows disagree in number")

    def __len__(self) -> int:
        return len(self._row)

    def __contains__(self, text: str) -> bool:
        return text_key(text) in self._row

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1]) if len(self) else 0

    @classmethod
    def read(cls, path: str | Path, what: str = "the cache") -> "EmbeddingCache":
        """Load a cache file without any identity check. ForeignFileError when `path` is not a
        safetensors file of ours (`what`: the setting that chose it, named as the way out);
        DamagedCacheError when it is ours but its data cannot be read (a torn tail)."""
        from safetensors import safe_open

        path = Path(path)
        if path.is_dir():  # safetensors: "No such device (os error 19)"; the advice to delete it would be wrong
            raise EmbeddingCacheError(f"{path} is a folder, not an embedding cache file; give the cache a file name")
        header = _safetensors_header(path)
        fmt = (header.get("__metadata__") or {}).get("format") if header is not None else None
        if fmt != CACHE_FORMAT:  # a data set's list, a model's weights: the user's, whatever the flags
            kind = "not a safetensors file" if header is None else f"format={fmt!r}"
            raise ForeignFileError(f"{path}: not a tgmae text-embedding cache ({kind}), so it is never replaced "
                                   f"(--rebuild or not); give {what} another file")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                emb, keys = f.get_tensor("embeddings").float(), f.get_tensor("keys")
        except Exception as e:  # safetensors raises its own error types for truncated files
            raise DamagedCacheError(f"{path}: damaged embedding cache ({e}).") from None
        if keys.ndim != 2 or keys.shape[1] != 16 or keys.shape[0] != emb.shape[0]:
            raise DamagedCacheError(f"{path}: damaged embedding cache: keys {tuple(keys.shape)} do not match "
                                    f"embeddings {tuple(emb.shape)}.")
        identity = ModelIdentity(meta.get("model", ""), meta.get("config_hash", ""), meta.get("weights", ""),
                                 meta.get("pooling", ""))
        return cls(identity, emb, [bytes(row) for row in keys.tolist()])

    @classmethod
    def open(cls, path: str | Path, identity: ModelIdentity, rebuild: bool = False,
             way_out: str = REBUILD_WAY_OUT, what: str = "the cache") -> "EmbeddingCache":
        """The cache at `path` for `identity`: empty if missing; a damaged cache or one of another
        model raises (`way_out`: what the command that chose `path` offers) unless `rebuild`. A file
        that is not a cache (ForeignFileError, naming `what`) raises, `rebuild` or not."""
        path = Path(path)
        if not path.exists():
            return cls(identity)
        try:
            cache = cls.read(path, what)
        except DamagedCacheError as e:
            if rebuild:
                return cls(identity)
            raise DamagedCacheError(f"{e} {way_out}") from None
        old, new = cache.identity, identity
        # one model: one folder however spelled, or the same files under another name (a folder moved:
        # `hub.same_model`, re-trial 29B M1)
        same_model = old.config_hash == new.config_hash and hub_same_model(old.model, new.model, old.weights,
                                                                            new.weights)
        same_files = (old.weights == new.weights or not new.weights) and new.same_pooling(old)  # "" = not local
        if not same_model or not same_files:
            if rebuild:
                return cls(identity)
            if same_model and not new.same_pooling(old):
                was = old.pooling or "unrecorded: cls, max or mean"
                raise EmbeddingCacheError(f"embedding cache {path} was pooled otherwise ({was}; {new.model!r} "
                                          f"pools {new.pooling}): its embeddings are stale. {way_out}")
            if same_model:
                raise EmbeddingCacheError(
                    f"embedding cache {path} was built with other weights of {new.model!r}, or other config / "
                    f"tokenizer files beside them (fingerprint {old.weights or 'unrecorded'}, now {new.weights}): "
                    f"its embeddings are stale. {way_out}"
                )
            raise EmbeddingCacheError(
                f"embedding cache {path} was built with {old.model!r} (config {old.config_hash[:12]}), "
                f"not {new.model!r} (config {new.config_hash[:12]}); embeddings of different models "
                f"are not comparable. {way_out}"
            )
        return cache

    def missing(self, texts: Sequence[str]) -> list[str]:
        """Distinct texts without a row, in first-seen order."""
        return [t for t in dict.fromkeys(texts) if text_key(t) not in self._row]

    def add(self, texts: Sequence[str], embeddings: torch.Tensor) -> None:
        """Append rows [len(texts), D] for texts not yet cached."""
        if embeddings.ndim != 2 or embeddings.shape[0] != len(texts):
            raise ValueError(f"embeddings {tuple(embeddings.shape)} do not match {len(texts)} texts")
        if len(self) and embeddings.shape[1] != self.dim:
            raise EmbeddingCacheError(f"embedding width {embeddings.shape[1]} != cached width {self.dim}")
        rows: dict[bytes, torch.Tensor] = {}  # the first row of each new text
        for t, e in zip(texts, embeddings):
            if text_key(t) not in self._row:
                rows.setdefault(text_key(t), e)
        if not rows:
            return
        block = torch.stack(list(rows.values())).float().cpu()
        self.embeddings = block if not len(self) else torch.cat([self.embeddings, block])
        for k in rows:
            self._row[k] = len(self._row)

    def lookup(self, texts: Sequence[str]) -> torch.Tensor:
        """[len(texts), D] rows for these texts; every text must be cached."""
        rows = []
        for t in texts:
            i = self._row.get(text_key(t))
            if i is None:
                raise EmbeddingCacheError(f"caption not in the embedding cache: {t[:80]!r}")
            rows.append(i)
        return self.embeddings[torch.tensor(rows, dtype=torch.long)] if rows else torch.zeros(0, self.dim)

    def save(self, path: str | Path) -> None:
        """Atomic: temp file in the same folder, fsync, rename over `path`."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        keys = sorted(self._row, key=self._row.__getitem__)
        key_t = torch.tensor([list(k) for k in keys], dtype=torch.uint8).reshape(len(keys), 16)
        meta = {"format": CACHE_FORMAT, "model": self.identity.model, "config_hash": self.identity.config_hash,
                "weights": self.identity.weights, "pooling": self.identity.pooling, "normalized": "l2",
                "count": str(len(keys)), "dim": str(self.dim)}
        remove_stale_temps(path.parent)  # of saves killed before their rename
        with atomic_path(path, fsync=True, own_folder=True) as tmp:  # save_file makes a temp of its own
            save_file({"embeddings": self.embeddings.contiguous(), "keys": key_t}, str(tmp), metadata=meta)


class TextEmbedder:
    """A frozen text encoder: texts -> [N, D] float32 L2-normalised embeddings.

    CLIP checkpoints load only the text tower (`CLIPTextModelWithProjection`: projected
    `text_embeds`); other models with `get_text_features` (e.g. SigLIP) load whole; any other
    transformers model (a BERT, a sentence-transformers folder) is a sentence encoder: its last
    hidden states [N, L, H] pooled over the real tokens as its sentence-transformers files say
    (`tgmae.captions.pooling`: mean when it has none; a module or mode it does not reproduce, a
    Dense projection, is refused by `ModelIdentity.of`). Texts are truncated to the model's
    context. setting: the key or flag that named the model (`--clip`, `captions.text_model`), named in ModelUnavailableError
    (a folder that is no saved text model: empty, a run folder, a video model without a tokenizer).
    """

    def __init__(self, name_or_path: str, device: str | torch.device = "cpu", setting: str = ""):
        from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPTextModelWithProjection

        self.identity = ModelIdentity.of(name_or_path, setting)
        self.device = torch.device(device)
        config = load_pretrained(AutoConfig.from_pretrained, name_or_path, what="CLIP model config", setting=setting)
        self.tokenizer = load_pretrained(AutoTokenizer.from_pretrained, name_or_path,
                                         what=f"text tokenizer ({config.model_type} config)", setting=setting)
        text_cfg = getattr(config, "text_config", config)
        restore = quiet_transformers()
        try:
            if config.model_type in ("clip", "clip_text_model"):  # the text tower alone
                options = {}
                if config.model_type == "clip":
                    text_cfg.projection_dim = config.projection_dim
                    options["config"] = text_cfg
                self.model = load_pretrained(CLIPTextModelWithProjection.from_pretrained, name_or_path,
                                             what="CLIP text model", setting=setting, dtype=torch.float32, **options)
            else:
                self.model = load_pretrained(AutoModel.from_pretrained, name_or_path, what="text model",
                                             setting=setting, dtype=torch.float32)
        finally:
            restore()
        self.model.eval().requires_grad_(False).to(self.device)
        self.model_type = config.model_type
        # "features": the model's get_text_features; else a sentence pooling of its hidden states
        self.pooling = ("features" if self.model_type in ("clip", "clip_text_model")
                        or hasattr(self.model, "get_text_features") else self.identity.pooling)
        context = getattr(text_cfg, "max_position_embeddings", None) or 77
        tok_max = getattr(self.tokenizer, "model_max_length", context) or context
        self.max_length = int(min(context, tok_max))

    @torch.no_grad()
    def __call__(self, texts: Sequence[str], batch_size: int = 256, progress: bool = False) -> torch.Tensor:
        """[len(texts), D] on CPU. Batches are formed from length-sorted texts (less padding)."""
        from tqdm import tqdm

        if not texts:
            raise ValueError("no texts to embed")
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        chunks = []
        padding = "max_length" if self.model_type.startswith("siglip") else True
        starts = range(0, len(order), batch_size)
        for s in tqdm(starts, desc="embedding captions", unit="batch", disable=not progress):
            idx = order[s:s + batch_size]
            enc = self.tokenizer([texts[i] for i in idx], padding=padding, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
            enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            if self.model_type in ("clip", "clip_text_model"):
                feats = self.model(**enc).text_embeds
            elif self.pooling == "features":  # transformers 5: an output object (.pooler_output)
                feats = self.model.get_text_features(**enc)
                feats = feats if isinstance(feats, torch.Tensor) else feats.pooler_output
            else:
                feats = pool_tokens(self.model(**enc).last_hidden_state, enc["attention_mask"], self.pooling)
            chunks.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu())
        return torch.cat(chunks)[torch.argsort(torch.tensor(order))]  # back to the texts' order


def default_cache_path(captions_file: str | Path, clip_model: str) -> Path:
    """`<captions stem>.<model slug>-<hash8>.emb.safetensors` next to the captions file; the hash
    covers the model's name and its weights' fingerprint, so new weights get a new cache."""
    captions_file = Path(captions_file)
    slug = clip_model.rstrip("/").replace("\\", "/").split("/")[-1] or "model"
    key = model_name(clip_model) + "@" + (weights_fingerprint(clip_model) or "")
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    return captions_file.with_name(f"{captions_file.stem}.{slug}-{digest}.emb.safetensors")


CACHE_SETTING = "captions.embedding_cache (embed-captions --out)"  # what chose a cache path, in refusals


def embed_texts(texts: Sequence[str], clip_model: str, cache_path: str | Path, batch_size: int = 256,
                device: str = "cpu", rebuild: bool = False, progress: bool = False,
                setting: str = "", way_out: str = "") -> torch.Tensor:
    """[len(texts), D] embeddings of `texts`, computing only those not in the cache (then saved).
    setting: the key or flag that named `clip_model`, named when it is not a loadable text model.
    way_out: what the caller offers when the cache is another model's (default: `REBUILD_WAY_OUT`).

    The model's weights are loaded only when some text is missing from the cache. One process
    writes a cache at a time: another one (a second run on the same captions, another DDP rank)
    waits up to `WRITE_WAIT_S` for it (`tgmae.locks`), then reads what it added.
    """
    check_kind(cache_path, CACHE_SETTING, folder=False)  # a folder there is the user's: refused, never "delete it"
    identity = ModelIdentity.of(clip_model, setting)
    way_out = way_out or REBUILD_WAY_OUT
    cache = EmbeddingCache.open(cache_path, identity, rebuild=rebuild, way_out=way_out, what=CACHE_SETTING)
    if not cache.missing(texts) and Path(cache_path).exists() and not rebuild:
        return cache.lookup(texts)
    with hold(cache_path, CACHE_SETTING, wait=WRITE_WAIT_S, folder=False):
        cache = EmbeddingCache.open(cache_path, identity, rebuild=rebuild, way_out=way_out,
                                    what=CACHE_SETTING)  # as the last writer left it
        missing = cache.missing(texts)
        if missing or not Path(cache_path).exists():
            if missing:
                embedder = TextEmbedder(clip_model, device=device, setting=setting)
                cache.add(missing, embedder(missing, batch_size=batch_size, progress=progress))
            cache.save(cache_path)
    return cache.lookup(texts)


