"""The vlmkit model: encoder -> connector -> causal LM, LLaVA style.

Checkpoint layout (every file loads with plain transformers / peft / safetensors):

    vlmkit_config.json         how the parts fit together
    connector.safetensors      the connector alone (LLaVA's mm_projector.bin equivalent)
    encoder/                   the tower, `from_pretrained` form (omitted when referenced by path, e.g. LoRA)
    language_model/            the LLM, or only its LoRA adapter (adapter_config.json names the base)
    tokenizer + preprocessor + vlmkit_processor.json
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vlmkit.models.connectors import build_connector
from vlmkit.models.encoders import encode, encoder_spec, load_encoder, num_encoder_tokens
from vlmkit.models.packed_attention import packed_attention_kwargs
from vlmkit.models.rng import rng_untouched

CONFIG_FILE = "vlmkit_config.json"
CONNECTOR_FILE = "connector.safetensors"


@dataclass
class VLMConfig:
    """How encoder, connector and LLM fit together (saved as vlmkit_config.json)."""

    modality: str
    encoder_model_type: str
    connector: str
    media_token_id: int
    num_media_tokens: int
    feature_layer: int = -2
    drop_cls_token: bool = True
    connector_kwargs: dict = field(default_factory=dict)
    encoder_name_or_path: str | None = None  # set when encoder weights are referenced, not saved
    language_model_name_or_path: str | None = None
    audio_samples: int = 16000
    lineage: list = field(default_factory=list)

    def save(self, out_dir: Path) -> None:
        (out_dir / CONFIG_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> VLMConfig:
        file = Path(path) / CONFIG_FILE
        if not file.is_file():
            raise FileNotFoundError(f"{path} is not a vlmkit checkpoint: {CONFIG_FILE} is missing")
        return cls(**json.loads(file.read_text()))


def load_connector_weights(connector: nn.Module, path: str) -> None:
    """Load connector.safetensors, or a LLaVA `mm_projector.bin` (keys mm_projector.0/2 -> linear_1/2)."""
    if path.endswith(".safetensors"):
        state = load_file(path)
    else:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        index = {"0": "linear_1", "2": "linear_2"}
        state = {}
        for key, value in raw.items():
            parts = key.split(".")
            i = parts.index("mm_projector") if "mm_projector" in parts else -1
            if i < 0 or len(parts) < i + 3 or parts[i + 1] not in index:
                raise ValueError(f"{path}: unexpected key '{key}' for an mlp2x_gelu projector")
            state[f"{index[parts[i + 1]]}.{parts[-1]}"] = value
    missing, unexpected = connector.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: connector weights do not fit (missing {missing}, unexpected {unexpected})")


def _match_vocab(language_model: nn.Module, checkpoint: Path) -> None:
    """Grow the base LLM's embeddings to the checkpoint tokenizer's size (`<image>`/pad added at build time)."""
    from transformers import AutoTokenizer

    if not (checkpoint / "tokenizer_config.json").is_file():
        return
    size = len(AutoTokenizer.from_pretrained(checkpoint))
    if language_model.get_input_embeddings().num_embeddings < size:
        language_model.resize_token_embeddings(size, mean_resizing=False)


class VLM(nn.Module):
    """Encoder + connector + causal LM. Media features replace the `<image>`/`<audio>` token embeddings."""

    def __init__(
        self, config: VLMConfig, encoder: nn.Module, connector: nn.Module, language_model: nn.Module
    ):
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.connector = connector
        self.language_model = language_model

    # ---- construction -------------------------------------------------------------------------------
    @classmethod
    def from_components(
        cls,
        *,
        encoder_path: str,
        language_model: nn.Module,
        media_token_id: int,
        connector: str = "mlp2x_gelu",
        connector_kwargs: dict | None = None,
        feature_layer: int = -2,
        drop_cls_token: bool | None = None,
        attn_implementation: str = "sdpa",
        pretrain_connector: str | None = None,
        audio_samples: int = 16000,
        trust_remote_code: bool = False,
    ) -> VLM:
        """A new VLM from an encoder checkpoint and a loaded LLM; the connector is fresh or from stage 1."""
        encoder = load_encoder(
            encoder_path, attn_implementation=attn_implementation, trust_remote_code=trust_remote_code
        )
        spec = encoder_spec(encoder.config.model_type)
        drop_cls = spec.has_cls if drop_cls_token is None else drop_cls_token
        connector_kwargs = dict(connector_kwargs or {})
        enc_dim = encoder.config.hidden_size
        text_dim = language_model.get_input_embeddings().embedding_dim
        conn = build_connector(connector, enc_dim, text_dim, **connector_kwargs)
        if pretrain_connector:
            load_connector_weights(conn, pretrain_connector)
        tokens = num_encoder_tokens(encoder, audio_samples) - int(drop_cls and spec.has_cls)
        config = VLMConfig(
            modality=spec.modality,
            encoder_model_type=encoder.config.model_type,
            connector=connector,
            media_token_id=media_token_id,
            num_media_tokens=conn.num_output_tokens(tokens),
            feature_layer=feature_layer,
            drop_cls_token=drop_cls,
            connector_kwargs=connector_kwargs,
            audio_samples=audio_samples,
            language_model_name_or_path=getattr(language_model, "name_or_path", None),
        )
        return cls(config, encoder, conn, language_model)

    @property
    def _no_split_modules(self) -> list[str]:
        """Layer classes that FSDP shards one by one (Accelerate's TRANSFORMER_BASED_WRAP reads this name):
        the encoder's and the LLM's own, limited to those present (CLIPVisionModel lists text-side classes)."""
        names = [
            *(getattr(self.encoder, "_no_split_modules", None) or []),
            *(getattr(self.language_model, "_no_split_modules", None) or []),
        ]
        present = {type(module).__name__ for module in self.modules()}
        return [name for name in dict.fromkeys(names) if name in present]

    # ---- forward ------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> VLM:
        """Like `nn.Module.train`, but a frozen encoder stays in eval mode.

        A frozen tower must give the same features in training as at inference: wav2vec2 in train mode
        would apply SpecAugment time masks, LayerDrop and dropout to its outputs.
        """
        super().train(mode)
        if mode and not any(p.requires_grad for p in self.encoder.parameters()):
            self.encoder.eval()
        return self

    def encode_media(self, media: torch.Tensor) -> torch.Tensor:
        """Pixel values (n, C, H, W) or audio (n, L) -> connector outputs (n, M, D_llm)."""
        trainable = any(p.requires_grad for p in self.encoder.parameters())
        with torch.set_grad_enabled(trainable and torch.is_grad_enabled()):
            features = encode(self.encoder, media, self.config.feature_layer, self.config.drop_cls_token)
        return self.connector(features.to(next(self.connector.parameters()).dtype))

    def dummy_media(self, device) -> torch.Tensor:
        """A zero media item, so batches without media still touch every trainable parameter."""
        if self.config.modality == "audio":
            return torch.zeros(1, self.config.audio_samples, device=device)
        size = self.encoder.config.image_size
        return torch.zeros(1, self.encoder.config.num_channels, size, size, device=device)

    def embed(
        self,
        input_ids: torch.Tensor,
        media: torch.Tensor | None = None,
        media_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings (B, T, D) with the media placeholder positions filled by connector outputs.

        `media_features` (n, N, D_enc) are cached encoder outputs; they skip the encoder.
        """
        media_mask = input_ids == self.config.media_token_id
        safe_ids = input_ids.masked_fill(media_mask, 0)
        embeds = self.language_model.get_input_embeddings()(safe_ids)
        if media_features is not None:
            projected = self.connector(media_features.to(next(self.connector.parameters()).dtype))
        elif media is not None and media.shape[0] > 0:
            projected = self.encode_media(media)
        else:
            projected = None
        if projected is None:
            if (
                self.training
                and torch.is_grad_enabled()
                and any(p.requires_grad for p in self.connector.parameters())
            ):
                # Same forward path on every rank (DDP/ZeRO) even when this batch has no media; only a pass
                # that a backward follows needs it.
                dummy = self.encode_media(self.dummy_media(input_ids.device))
                embeds = embeds + 0.0 * dummy.sum()
            if media_mask.any():
                raise ValueError("the batch has media placeholder tokens but no media")
            return embeds
        projected = projected.to(embeds.dtype)
        expected = int(media_mask.sum())
        if expected != projected.shape[0] * projected.shape[1]:
            raise ValueError(
                f"media token count mismatch: {expected} placeholder positions in the batch but "
                f"{projected.shape[0]} media x {projected.shape[1]} tokens"
            )
        return embeds.masked_scatter(media_mask.unsqueeze(-1), projected.reshape(-1, projected.shape[-1]))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        media: torch.Tensor | None = None,
        media_features: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        use_cache: bool = False,
        **kwargs,
    ):
        """Returns the LLM output (logits (B, T, V)); the loss is computed by the caller.

        Packed rows (position ids restarting inside a row, no 2-D mask) get their sample boundaries passed
        to the attention explicitly (`packed_attention`); `use_cache=True` with packed rows is refused.
        """
        embeds = self.embed(input_ids, media, media_features)
        boundaries = packed_attention_kwargs(
            self.language_model.config._attn_implementation, position_ids, attention_mask, embeds.dtype,
            use_cache=use_cache,
        )  # fmt: skip
        return self.language_model(
            inputs_embeds=embeds,
            attention_mask=boundaries.pop("attention_mask", attention_mask),
            position_ids=position_ids,
            use_cache=use_cache,
            **boundaries,
            **kwargs,
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        media: torch.Tensor | None = None,
        media_features: torch.Tensor | None = None,
        **generate_kwargs,
    ) -> torch.Tensor:
        """Batched generation with the KV cache; inputs must be left-padded. Returns new tokens (B, T_new).

        `media_features` (n, N, D_enc) are cached encoder outputs, as in `embed`. The media placeholder token
        is never sampled: a response holding one could not be fed back through `forward`."""
        embeds = self.embed(input_ids, media, media_features)
        suppress = set(generate_kwargs.pop("suppress_tokens", None) or [])
        suppress.add(self.config.media_token_id)
        return self.language_model.generate(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            suppress_tokens=sorted(suppress),
            **generate_kwargs,
        )

    # ---- save / load --------------------------------------------------------------------------------
    @property
    def is_peft(self) -> bool:
        return hasattr(self.language_model, "peft_config")

    def save_pretrained(
        self, out_dir: str | Path, *, state_dict: dict | None = None, save_encoder: bool | None = None
    ) -> None:
        """Write the checkpoint layout above. `state_dict` is the consolidated one under ZeRO-3/FSDP."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if state_dict is None:
            state_dict = {k: v for k, v in self.state_dict().items()}
        parts = {"encoder": {}, "connector": {}, "language_model": {}}
        for key, value in state_dict.items():
            head, _, rest = key.partition(".")
            parts[head][rest] = value.detach().cpu().contiguous()
        encoder_trainable = any(p.requires_grad for p in self.encoder.parameters())
        if save_encoder is None:
            save_encoder = not (self.is_peft and not encoder_trainable and self.config.encoder_name_or_path)
        config = VLMConfig(**asdict(self.config))
        if save_encoder:
            config.encoder_name_or_path = None
            self.encoder.save_pretrained(out / "encoder", state_dict=parts["encoder"])
        save_file(parts["connector"], str(out / CONNECTOR_FILE))
        # A PeftModel's save_pretrained keeps only the adapter weights of the given state dict.
        self.language_model.save_pretrained(out / "language_model", state_dict=parts["language_model"])
        config.save(out)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        attn_implementation: str = "sdpa",
        is_trainable: bool = False,
        quantization_config=None,
        torch_dtype=None,
        trust_remote_code: bool = False,
    ) -> VLM:
        """Load a vlmkit checkpoint (full model or LoRA adapter + references)."""
        from transformers import AutoModelForCausalLM

        path = Path(path)
        config = VLMConfig.load(path)
        encoder_path = str(path / "encoder") if (path / "encoder").is_dir() else config.encoder_name_or_path
        if encoder_path is None:
            raise FileNotFoundError(
                f"{path}: no encoder/ directory and no encoder_name_or_path in {CONFIG_FILE}"
            )
        encoder = load_encoder(
            encoder_path, attn_implementation=attn_implementation, trust_remote_code=trust_remote_code
        )
        enc_dim = encoder.config.hidden_size
        lm_dir = path / "language_model"
        lm_kwargs = dict(attn_implementation=attn_implementation, trust_remote_code=trust_remote_code)
        if quantization_config is not None:
            lm_kwargs["quantization_config"] = quantization_config
        if torch_dtype is not None:
            lm_kwargs["dtype"] = torch_dtype
        if (lm_dir / "adapter_config.json").is_file():
            from peft import PeftModel

            base_path = json.loads((lm_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
            with rng_untouched():  # under ZeRO-3 loading draws random numbers (see vlmkit.models.rng)
                base = AutoModelForCausalLM.from_pretrained(base_path, **lm_kwargs)
            _match_vocab(base, path)  # tokens added when the VLM was built (saved in the adapter)
            language_model = PeftModel.from_pretrained(base, lm_dir, is_trainable=is_trainable)
        else:
            with rng_untouched():
                language_model = AutoModelForCausalLM.from_pretrained(lm_dir, **lm_kwargs)
        text_dim = language_model.get_input_embeddings().embedding_dim
        connector = build_connector(config.connector, enc_dim, text_dim, **config.connector_kwargs)
        load_connector_weights(connector, str(path / CONNECTOR_FILE))
        config.encoder_name_or_path = encoder_path
        return cls(config, encoder, connector, language_model)
