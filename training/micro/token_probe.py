"""An auxiliary head on the VLM's last hidden states, used only while training (never saved).

The transformer is conditioned on the last hidden states of its prompt. A language model
trained on next-token loss alone turns those into predictions of the *next* token and lets
the token itself fade: measured on the same 64 pictures, a transformer learning from the
VLM's input embeddings separated its own prompt from a shuffled one three times as much
after 400 steps as one learning from the last hidden states. This head makes every text
token of a condition (the text-to-image and edit templates) predict its own id from its
last hidden state, so the words the transformer must draw stay readable there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TokenProbe(nn.Module):
    def __init__(self, width: int, vocab_size: int) -> None:
        super().__init__()
        self.head = nn.Linear(width, vocab_size)

    def loss(self, hidden: torch.Tensor, input_ids: torch.Tensor, read: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of each position marked in ``read`` (``[batch, seq]`` bool) predicting its own id."""
        return F.cross_entropy(self.head(hidden[read]), input_ids[read])
