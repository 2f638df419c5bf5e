"""Stage 0 (speech): wav2vec 2.0 self-supervised pretraining of an audio encoder.

    python recipes/wav2vec2_pretrain.py --config recipes/configs/spoken_digits_wav2vec2.yaml
    accelerate launch recipes/wav2vec2_pretrain.py --config recipes/configs/spoken_digits_wav2vec2.yaml
    python recipes/wav2vec2_pretrain.py --data_path my_clips.json --eval_data_path my_eval.json \
        --hidden_size 768 --num_hidden_layers 12 --num_attention_heads 12 --intermediate_size 3072 \
        --conv_dim 512,512,512,512,512,512,512 --codevector_dim 256 --proj_codevector_dim 256 \
        --num_codevectors_per_group 320 --mask_length 10 --num_negatives 100 --output_dir out/wav2vec2
    # then stage 1 on the new encoder:
    python recipes/llava_stage1.py --config recipes/configs/spoken_digits_audio_stage1.yaml \
        --audio_tower outputs/spoken_digits/wav2vec2

The convolutional feature encoder turns audio into latent frames; spans of frames are masked before
the transformer, which must pick the Gumbel-quantized target of each masked frame among distractors
from the same clip (contrastive loss), while a diversity loss keeps the codebooks in use.
Writes into --output_dir: the encoder (a Wav2Vec2ForPreTraining checkpoint whose Wav2Vec2Model loads
with from_pretrained, plus its feature extractor), config.yaml, metrics.json (eval_linear_probe_accuracy
on a held-out accent against eval_linear_probe_accuracy_random_init, eval_codebook_perplexity),
train_log.jsonl (contrastive/diversity loss, perplexity, temperature per step), loss.png and README.md.
"""

from __future__ import annotations

from statistics import mean

from torch.utils.data import DataLoader
from transformers import Wav2Vec2ForPreTraining

from vlmkit.config.parser import parse_config
from vlmkit.config.ssl_audio import Wav2Vec2PretrainConfig
from vlmkit.data.records import SkipCounter
from vlmkit.hub.lifecycle import HUB, EncoderCard, encoder_card
from vlmkit.ssl.audio_data import AudioClipDataset, collate_clips
from vlmkit.ssl.wav2vec2_pretraining import (
    Wav2Vec2PretrainingStep,
    build_feature_extractor,
    build_pretraining_model,
    probe_metrics,
    random_init_like,
    save_pretrained_encoder,
)
from vlmkit.training.accelerator import parameter_layout
from vlmkit.training.loop import train
from vlmkit.training.run import Run

CARD = EncoderCard(
    title="stage 0, wav2vec 2.0", stage="stage 0 (wav2vec2 pretraining)", new_model="new (random init)",
    pipeline_tag="feature-extraction",
    usage="""from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

encoder = Wav2Vec2Model.from_pretrained("{path}")
feature_extractor = Wav2Vec2FeatureExtractor.from_pretrained("{path}")
# stage 1: python recipes/llava_stage1.py --config recipes/configs/spoken_digits_audio_stage1.yaml \\
#     --audio_tower {path}""",
)  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(Wav2Vec2PretrainConfig, argv, prog="wav2vec2_pretrain", description=__doc__)
    run = Run(cfg, "wav2vec2_pretrain", hub=HUB)

    model = build_pretraining_model(cfg)
    feature_extractor = build_feature_extractor(cfg.model_name_or_path, cfg.sampling_rate)
    skips = SkipCounter()
    clips = dict(
        num_samples=cfg.audio_samples, audio_folder=cfg.audio_folder,
        allow_outside_root=cfg.allow_outside_media_root, on_bad_sample=cfg.on_bad_sample, skips=skips,
    )  # fmt: skip
    train_set = AudioClipDataset(cfg.data_path, feature_extractor, **clips)
    step = Wav2Vec2PretrainingStep(
        mask_prob=cfg.mask_prob, mask_length=cfg.mask_length, min_masks=cfg.min_masks,
        num_negatives=cfg.num_negatives, contrastive_temperature=cfg.contrastive_temperature,
        diversity_weight=cfg.diversity_loss_weight, max_temperature=cfg.max_gumbel_temperature,
        min_temperature=cfg.min_gumbel_temperature, temperature_decay=cfg.gumbel_temperature_decay,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, seed=cfg.seed + run.accelerator.process_index,
    )  # fmt: skip
    result = train(
        cfg, run.accelerator, model, train_set, collate_clips, step,
        count_items=lambda batch: 0 if batch.get("empty") else 1, extra_state={"wav2vec2_step": step},
    )  # fmt: skip

    def save(unwrapped, out, state_dict) -> None:
        save_pretrained_encoder(unwrapped, feature_extractor, out, state_dict=state_dict)

    run.save(result.model, save=save)

    def evaluate(trained) -> dict:
        """Linear probe (train clips -> held-out accent) against a random-init encoder; codebook use."""
        eval_folder = cfg.eval_audio_folder or cfg.audio_folder
        eval_set = AudioClipDataset(
            cfg.eval_data_path, feature_extractor, **{**clips, "audio_folder": eval_folder}
        )
        loaders = [
            DataLoader(dataset, batch_size=cfg.per_device_eval_batch_size, collate_fn=collate_clips)
            for dataset in (train_set, eval_set)
        ]
        baseline = random_init_like(trained, cfg.seed)
        return probe_metrics(trained, baseline, *loaders, layer=cfg.probe_layer, c=cfg.probe_c, seed=cfg.seed)

    # contrastive loss over the first and last tenth of the run shows whether it fell
    window = max(1, len(result.history) // 10)
    losses = [r["contrastive_loss"] for r in result.history if "contrastive_loss" in r]
    metrics = {
        "train_loss": result.history[-1]["loss"],
        "train_contrastive_loss_start": mean(losses[:window]),
        "train_contrastive_loss_end": mean(losses[-window:]),
        "global_step": result.global_step,
    }
    metrics.update(parameter_layout(run.accelerator, result.model))  # world size, parameters per rank
    if cfg.eval_data_path:
        metrics.update(run.evaluate(evaluate, result.model, load=Wav2Vec2ForPreTraining.from_pretrained))
    return run.finish(metrics, card=encoder_card(cfg, CARD), skips=skips)


if __name__ == "__main__":
    main()
