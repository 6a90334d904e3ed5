"""Size bucketing in the batch pipeline: images of similar patch counts share a batch, results come back in input
order, and only a bounded window of images is decoded at a time."""

import threading
import time

import numpy as np
from skimage import data

from agff_deploy.preprocessing import NativeImageSettings, NativePreprocessor
from runtime.bucketing import buckets, in_input_order
from runtime.pipeline import embed_in_batches

NATIVE = NativePreprocessor(NativeImageSettings(max_pixels=448 * 448))


def _shaped(*sides):
    return [np.zeros((3, h, w), np.float32) for h, w in sides]


def test_buckets_sort_by_size_and_keep_input_order_among_equal_sizes():
    images = _shaped((56, 56), (448, 448), (56, 56), (112, 56), (448, 448))
    assert buckets(images, 2) == [[0, 2], [3, 1], [4]]


def test_results_of_sorted_batches_come_back_in_input_order():
    batches = [[0, 2], [3, 1], [4]]
    parts = [np.array([[0.0], [2.0]]), np.array([[3.0], [1.0]]), np.array([[4.0]])]
    np.testing.assert_array_equal(in_input_order(parts, batches), [[0.0], [1.0], [2.0], [3.0], [4.0]])


def _recording_embed(batches):
    """An embed function that records each batch's image sizes and answers each image with its pixel count."""

    def embed(pixels, instructions):
        batches.append([p.shape[1:] for p in pixels])
        return np.array([[[p.shape[1] * p.shape[2]]] for p in pixels], np.float32)

    return embed


def test_a_window_puts_thumbnails_and_large_photos_in_different_batches():
    photo, thumb = data.astronaut(), data.astronaut()[::16, ::16]  # 512x512 and 32x32
    items = [photo, thumb, photo, thumb]
    bucketed, in_order = [], []
    outcome = embed_in_batches(items, [""] * 4, _recording_embed(bucketed), NATIVE, 2, 10**8)
    embed_in_batches(items, [""] * 4, _recording_embed(in_order), NATIVE, 2, 10**8, window_batches=1)
    assert bucketed == [[(56, 56), (56, 56)], [(448, 448), (448, 448)]]
    assert [sorted(batch) for batch in in_order] == [[(56, 56), (448, 448)], [(56, 56), (448, 448)]]
    assert outcome.names == ["image 0", "image 1", "image 2", "image 3"]
    assert outcome.stacked()[:, 0, 0].tolist() == [448 * 448, 56 * 56, 448 * 448, 56 * 56]


def test_at_most_two_windows_of_images_are_decoded_ahead_of_the_model():
    """40 images, batches of 2, windows of 2 batches: never more than 8 images decoded and not yet embedded, though
    the model is slower than decoding."""
    decoded, embedded, most = [0], [0], [0]
    lock = threading.Lock()

    class CountingPreprocessor(NativePreprocessor):
        def resize(self, image):
            with lock:
                decoded[0] += 1
            return super().resize(image)

    def embed(pixels, instructions):
        time.sleep(0.01)
        with lock:
            most[0] = max(most[0], decoded[0] - embedded[0])
            embedded[0] += len(pixels)
        return np.zeros((len(pixels), 1, 1), np.float32)

    items = [data.astronaut()[: 64 + i, :64] for i in range(40)]
    outcome = embed_in_batches(
        items, [""] * 40, embed, CountingPreprocessor(NATIVE.settings), 2, 10**8, None, None, None, 2
    )
    assert len(outcome.names) == 40 and 4 <= most[0] <= 8
