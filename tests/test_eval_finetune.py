"""UperNet wiring on timm backbones: Swin's channels-last stage outputs converted correctly."""

import numpy as np
import pytest
import timm
import torch

from leader.eval.finetune import Backbone, Classifier, UperNetSegmenter, stage_features, to_nchw
from leader.teachers.base import InputSpec

TINY_SWIN = dict(img_size=64, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models on shared cores: one intra-op thread is several times faster than two."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def swin():
    torch.manual_seed(0)
    return timm.create_model("swin_tiny_patch4_window7_224", num_classes=0, **TINY_SWIN).eval()


def test_swin_stage_outputs_are_channels_last_and_converted(swin):
    x = torch.rand(2, 3, 64, 64)
    assert swin.output_fmt == "NHWC"
    raw = swin.layers[0](swin.patch_embed(x))
    assert tuple(raw.shape) == (2, 16, 16, 16) and raw.shape[-1] == 16      # [B, H, W, C]
    # hooks on the raw (NHWC) stage outputs + our conversion == timm's NCHW intermediates
    hooked = stage_features(swin, x, force_hooks=True)
    timm_way = stage_features(swin, x)
    assert [tuple(f.shape) for f in hooked] == [(2, 16, 16, 16), (2, 32, 8, 8), (2, 64, 4, 4), (2, 128, 2, 2)]
    for a, b in zip(hooked, timm_way):
        torch.testing.assert_close(a, b)
    # the conversion is a permutation: pixel (h, w) of channel c stays at [c, h, w]
    torch.testing.assert_close(hooked[0][1, :, 3, 5], raw[1, 3, 5, :])
    # a reshape would put other numbers there
    assert not torch.allclose(raw.reshape(2, 16, 16, 16)[1, :, 3, 5], raw[1, 3, 5, :])


def test_to_nchw_checks_channels():
    f = torch.zeros(1, 4, 4, 8)
    assert tuple(to_nchw(f, "NHWC", 8).shape) == (1, 8, 4, 4)
    with pytest.raises(ValueError, match="channels"):
        to_nchw(f, "NCHW", 8)       # an NHWC map declared NCHW is caught
    with pytest.raises(ValueError, match="4-D"):
        to_nchw(torch.zeros(2, 3), "NCHW")


@pytest.mark.parametrize("arch,kw", [("swin_tiny_patch4_window7_224", TINY_SWIN), ("test_convnext", {}),
                                     ("resnet18", {})])
def test_upernet_forward_backward_and_dice(arch, kw):
    from leader.eval.metrics import dice

    torch.manual_seed(0)
    net = timm.create_model(arch, num_classes=0, **kw)
    seg = UperNetSegmenter(Backbone(net, InputSpec(size=64), arch), classes=1, decoder_channels=16)
    x = torch.rand(2, 1, 64, 64)
    y = seg(x)
    assert tuple(y.shape) == (2, 1, 64, 64)
    target = (torch.rand(2, 1, 64, 64) > 0.5).float()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(y, target)
    loss.backward()
    assert net.patch_embed.proj.weight.grad is not None if arch.startswith("swin") else True
    assert all(p.grad is not None for p in seg.decoder.parameters() if p.requires_grad)
    d = dice((torch.sigmoid(y) > 0.5).numpy()[:, 0], target.numpy()[:, 0])
    assert 0.0 <= d <= 1.0
    assert Classifier(Backbone(net, InputSpec(size=64), arch), 3)(x).shape == (2, 3)


def test_backbone_from_student_keeps_its_normalisation():
    from leader.eval.finetune import load_backbone
    from leader.models.student import LeaderModel

    st = LeaderModel(backbone="swin_tiny_patch4_window7_224", head_dims={"disease": 8}, img_size=64,
                     backbone_kwargs={k: v for k, v in TINY_SWIN.items() if k != "img_size"}).eval()
    bb = load_backbone(st).eval()
    x = torch.rand(2, 1, 64, 64)
    torch.testing.assert_close(bb(x), st(x)["e_da"])            # same E_DA as the student
    assert all(p.requires_grad for p in bb.parameters())
    assert bb.net is not st.backbone                             # a copy: fine-tuning leaves the student alone
    assert np.isclose(bb.spec.mean[0], 0.485)
