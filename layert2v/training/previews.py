"""Sample previews while a DiT stage trains: one fixed validation prompt sampled with the EMA weights every
`every` steps and at the end, saved as a contact sheet (PNG) and a GIF and logged to the stage's MLflow run
under `previews/`, so progress is something people can look at, not only a loss curve."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from layert2v.config import EvaluateConfig
from layert2v.evaluate import ValPrompt, generate, write_preview
from layert2v.models.vae import LayerVAE


class SamplePreviews(L.Callback):
    def __init__(
        self,
        vae: LayerVAE,
        prompt: ValPrompt,
        cfg: EvaluateConfig,
        frames: int,
        size: tuple[int, int],
        folder: Path,
        every: int,
    ) -> None:
        self.vae, self.prompt, self.cfg, self.frames, self.size = vae, prompt, cfg, frames, size
        self.folder, self.every = Path(folder), every

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *_: object) -> None:
        step = trainer.global_step
        if step % self.every == 0 or step == trainer.max_steps:
            self.preview(trainer, module, step)

    @rank_zero_only
    def preview(self, trainer: L.Trainer, module: L.LightningModule, step: int) -> list[Path]:
        from layert2v.models.text import load_text_encoder
        from layert2v.pipeline import LayerT2VPipeline

        ema = module.ema
        pipeline = LayerT2VPipeline(ema, self.vae, load_text_encoder(None, ema.cfg.text_len))
        video = generate(pipeline, self.prompt, self.cfg, self.frames, self.size, self.cfg.preview_steps)
        module.train()  # the pipeline put the EMA copy in eval mode; training goes on
        paths = write_preview(video, self.folder, f"step{step:06d}")
        logger = trainer.logger
        for path in paths:
            logger.experiment.log_artifact(logger.run_id, str(path), "previews")
        return paths
