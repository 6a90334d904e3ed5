"""Size bucketing: batch images of similar patch counts together, so little of each batch is padding.

At native resolution each image has its own number of patches, and the vision encoder takes a batch as rows of
patches `[B, P, 3*p*p]` padded to the largest image's `P` (`agff_deploy.patches`). A batch that mixes a 16-token
thumbnail with a 1280-token photo computes the thumbnail's row at the photo's length. Sorting the images of a job by
patch count before cutting it into batches puts like with like, and the results are put back in input order after.

Why bucketing and not packing (several images concatenated in one row, as TensorRT-LLM's Qwen2-VL engine feeds its
vision tower): packing needs block-diagonal attention, so that an image's patches attend only to their own image.
Our vision graph masks padding per row (one image per row, its grid says where the padding starts) and builds
each row's rotary positions from that one grid; it has no way to separate two images inside one row. Bucketing needs
nothing from the graph, and with sorted batches the padding left is the spread of patch counts within a batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Images are sorted within windows of this many batches: the pipeline holds at most two windows of decoded images
# (the one being embedded and the next, decoding), so a 100k-image job never decodes everything at once.
WINDOW_BATCHES = 8


def buckets(images: Sequence[np.ndarray], batch_size: int) -> list[list[int]]:
    """Indices of normalised `[3, H, W]` images cut into batches of at most `batch_size`, smallest images first.

    The pixel count orders images as their patch count does (patches are `H*W / p**2`). The sort is stable, so images
    of one size (every image at a fixed size) keep their input order and batch exactly as without bucketing.
    """
    order = sorted(range(len(images)), key=lambda i: images[i].shape[-2] * images[i].shape[-1])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def in_input_order(parts: Sequence[np.ndarray], batches: Sequence[Sequence[int]]) -> np.ndarray:
    """The results of each batch from `buckets` (rows in batch order), concatenated and put back in input order."""
    order = np.fromiter((i for batch in batches for i in batch), np.int64)
    return np.concatenate(parts)[np.argsort(order)]
