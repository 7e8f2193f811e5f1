"""The clean regime: plain cross-entropy training (Jia et al. eq. 10), no perturbation."""

from __future__ import annotations

from torch import Tensor, nn

from advorch.trainers.adversarial.base import classification_loss
from advorch.trainers.models.base import Batch


class Clean:
    name = "clean"

    def backward(self, model: nn.Module, batch: Batch) -> dict[str, Tensor]:
        out = model(model.embed(batch), batch)
        loss = classification_loss(out, batch)
        loss.backward()
        return {"loss": loss.detach(), "clean_loss": loss.detach(), "logits": out.logits.detach()}
