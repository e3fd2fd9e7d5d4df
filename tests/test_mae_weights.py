"""Importing facebookresearch/mae and timm ViT-MAE weights: maskgen's outputs match torch's.

A tiny MaskedAutoencoderViT is written here from timm's `Block` and `PatchEmbed`, following
models_mae.py's forward_encoder / forward_decoder (random masking by argsort of noise that the test
supplies, so both sides see the same mask and the same kept-token order). Its random weights go
through torch.save (.pth) and safetensors, the weights-only readers, `mae_torch.convert`, and into
maskgen's MAE; encoder features and decoder predictions must agree within float32 tolerance.
torch and timm are in the `test` extra: a missing torch fails here rather than skipping.
"""

import functools

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.torch import save_file
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block, VisionTransformer

from maskgen import parallel
from maskgen.config import DEFAULT_SHARDING_RULES
from maskgen.models.vit import patchify
from maskgen.recipes.mae import MAERecipe
from maskgen.weights import mae_torch
from maskgen.weights.files import WeightFileError

IMAGE, PATCH, CHANNELS, WIDTH, DEPTH, HEADS = 32, 8, 3, 64, 2, 4
DEC_WIDTH, DEC_DEPTH, DEC_HEADS = 32, 2, 4
GRID = IMAGE // PATCH
NUM_PATCHES = GRID * GRID
KEEP = 4  # of 16 patches: mask ratio 0.75


def reference_pos_embed(dim: int, grid_size: int) -> np.ndarray:
    """util/pos_embed.py's get_2d_sincos_pos_embed(dim, grid_size, cls_token=True), transcribed."""
    grid = np.stack(np.meshgrid(np.arange(grid_size, dtype=np.float32), np.arange(grid_size, dtype=np.float32)))

    def one_axis(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([one_axis(dim // 2, grid[0]), one_axis(dim // 2, grid[1])], axis=1)
    return np.concatenate([np.zeros([1, dim]), emb], axis=0).astype(np.float32)


class TinyMAE(torch.nn.Module):
    """models_mae.py's MaskedAutoencoderViT at test size, with the masking noise given by the caller."""

    def __init__(self):
        super().__init__()
        norm = functools.partial(torch.nn.LayerNorm, eps=1e-6)
        self.patch_embed = PatchEmbed(IMAGE, PATCH, CHANNELS, WIDTH)
        self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, WIDTH))
        self.pos_embed = torch.nn.Parameter(torch.from_numpy(reference_pos_embed(WIDTH, GRID))[None], requires_grad=False)
        self.blocks = torch.nn.ModuleList([Block(WIDTH, HEADS, 4.0, qkv_bias=True, norm_layer=norm) for _ in range(DEPTH)])
        self.norm = norm(WIDTH)
        self.decoder_embed = torch.nn.Linear(WIDTH, DEC_WIDTH)
        self.mask_token = torch.nn.Parameter(torch.zeros(1, 1, DEC_WIDTH))
        self.decoder_pos_embed = torch.nn.Parameter(torch.from_numpy(reference_pos_embed(DEC_WIDTH, GRID))[None],
                                                    requires_grad=False)
        self.decoder_blocks = torch.nn.ModuleList(
            [Block(DEC_WIDTH, DEC_HEADS, 4.0, qkv_bias=True, norm_layer=norm) for _ in range(DEC_DEPTH)])
        self.decoder_norm = norm(DEC_WIDTH)
        self.decoder_pred = torch.nn.Linear(DEC_WIDTH, PATCH * PATCH * CHANNELS)

    def forward_encoder(self, images, noise):
        x = self.patch_embed(images) + self.pos_embed[:, 1:]
        ids_shuffle = torch.argsort(noise, dim=1)  # small noise is kept
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        x = torch.gather(x, 1, ids_shuffle[:, :KEEP, None].repeat(1, 1, WIDTH))
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x), ids_restore

    def forward_decoder(self, latent, ids_restore):
        x = self.decoder_embed(latent)
        masks = self.mask_token.repeat(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
        x_ = torch.gather(torch.cat([x[:, 1:], masks], dim=1), 1, ids_restore[..., None].repeat(1, 1, x.shape[2]))
        x = torch.cat([x[:, :1], x_], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Every learned tensor random (LayerNorm scales and all biases too), positions left fixed."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "pos_embed" not in name:
                is_norm_scale = p.ndim == 1 and name.endswith(".weight")
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1 + (1.0 if is_norm_scale else 0.0))


@pytest.fixture(scope="module", autouse=True)
def one_device_mesh():
    mesh = parallel.make_mesh((("data", -1), ("fsdp", 1), ("tensor", 1)))
    with parallel.sharding_context(mesh, DEFAULT_SHARDING_RULES):
        yield


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    torch.manual_seed(0)
    model = TinyMAE().eval()
    _randomise(model, 1)
    images = torch.rand(3, CHANNELS, IMAGE, IMAGE, generator=torch.Generator().manual_seed(2)) * 2 - 1
    noise = torch.rand(3, NUM_PATCHES, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        latent, ids_restore = model.forward_encoder(images, noise)
        pred = model.forward_decoder(latent, ids_restore)
    folder = tmp_path_factory.mktemp("mae_weights")
    pth, safetensors = str(folder / "mae.pth"), str(folder / "mae.safetensors")
    torch.save({"model": model.state_dict(), "epoch": 799}, pth)  # main_pretrain.py's wrapper
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, safetensors)
    return {"pth": pth, "safetensors": safetensors, "images": images.permute(0, 2, 3, 1).numpy(),
            "order": torch.argsort(noise, dim=1).numpy(), "latent": latent.numpy(), "pred": pred.numpy(),
            "state_dict": {k: v.numpy() for k, v in model.state_dict().items()}}


def _imported(path: str, **options):
    """The file through read / make_config / data_info / convert into maskgen's MAE (built abstractly:
    every parameter then comes from the file)."""
    tree = mae_torch.read(path)
    config = mae_torch.make_config(tree, **options)
    config.compute_dtype = "float32"  # the paper config computes in bfloat16
    recipe = MAERecipe.from_config(config, mae_torch.data_info(tree, config))
    model = nnx.eval_shape(lambda: recipe.make_model(nnx.Rngs(0)))
    nnx.update(model, mae_torch.convert(tree, config))
    return tree, config, recipe, model


@functools.partial(nnx.jit, static_argnums=3)
def _encode_and_predict(model, patches, order, keep):
    """maskgen's encoder tokens for the first `keep` of `order`, and the decoder's predictions."""
    return model.encoder(patches, order[:, :keep]), model(patches, order, keep)


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_mae_import_matches_torch_encoder_and_decoder(reference, fmt):
    tree, config, recipe, model = _imported(reference[fmt], num_heads=HEADS, decoder_heads=DEC_HEADS)
    for key, value in reference["state_dict"].items():  # the readers give back the saved arrays
        np.testing.assert_array_equal(tree[key], value, err_msg=key)
    m = config.model
    assert (m.width, m.depth, m.num_heads, m.patch_size, config.data.image_size) == (WIDTH, DEPTH, HEADS, PATCH, IMAGE)
    assert (m.decoder_width, m.decoder_depth, m.decoder_heads, m.mlp_ratio) == (DEC_WIDTH, DEC_DEPTH, DEC_HEADS, 4.0)
    assert recipe.num_visible == KEEP
    patches = patchify(jnp.asarray(reference["images"]), PATCH)
    order = jnp.asarray(reference["order"], jnp.int32)
    latent, pred = _encode_and_predict(model, patches, order, KEEP)
    np.testing.assert_allclose(latent, reference["latent"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(pred, reference["pred"], rtol=1e-4, atol=1e-4)


def test_timm_encoder_only_safetensors_matches_forward_features(tmp_path):
    """timm's ViT with MAE's fixed positions (what `vit_*_patch16_224.mae` holds), encoder only."""
    torch.manual_seed(4)
    vit = VisionTransformer(img_size=IMAGE, patch_size=PATCH, in_chans=CHANNELS, embed_dim=WIDTH, depth=DEPTH,
                            num_heads=HEADS, mlp_ratio=4.0, qkv_bias=True, num_classes=0,
                            norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6)).eval()
    _randomise(vit, 5)
    with torch.no_grad():
        vit.pos_embed.copy_(torch.from_numpy(reference_pos_embed(WIDTH, GRID))[None])
    path = str(tmp_path / "model.safetensors")
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, path)
    images = torch.rand(2, CHANNELS, IMAGE, IMAGE, generator=torch.Generator().manual_seed(6)) * 2 - 1
    with torch.no_grad():
        tokens = vit.forward_features(images).numpy()  # [B, 1 + N, width] after the final norm
    tree = mae_torch.read(path)
    assert not mae_torch.has_decoder(tree)
    paper = mae_torch.make_config(tree, num_heads=HEADS).model  # a fresh decoder: the paper's unless told
    assert (paper.decoder_width, paper.decoder_depth, paper.decoder_heads) == (512, 8, 16)
    tree, config, _, model = _imported(path, num_heads=HEADS, decoder_width=DEC_WIDTH, decoder_depth=1,
                                       decoder_heads=DEC_HEADS)
    patches = patchify(jnp.asarray(images.permute(0, 2, 3, 1).numpy()), PATCH)
    # All patches visible; the fresh decoder still runs and gives finite predictions.
    order = jnp.tile(jnp.arange(NUM_PATCHES), (2, 1))
    encoded, pred = _encode_and_predict(model, patches, order, NUM_PATCHES)
    np.testing.assert_allclose(encoded, tokens, rtol=1e-4, atol=1e-4)
    assert np.isfinite(np.asarray(pred)).all()


def test_mae_import_errors_name_the_problem(reference):
    tree = dict(reference["state_dict"])
    with pytest.raises(ValueError, match="num_heads"):
        mae_torch.make_config(tree)  # width 64 has no standard head count
    config = mae_torch.make_config(tree, num_heads=HEADS, decoder_heads=DEC_HEADS)
    swapped = dict(tree, pos_embed=np.concatenate(
        [tree["pos_embed"][..., WIDTH // 2:], tree["pos_embed"][..., :WIDTH // 2]], axis=-1))
    with pytest.raises(WeightFileError, match="pos_embed.*x and y halves swapped"):
        mae_torch.convert(swapped, config)
    learned = dict(tree, decoder_pos_embed=tree["decoder_pos_embed"] + 0.01)
    with pytest.raises(WeightFileError, match="decoder_pos_embed differs"):
        mae_torch.convert(learned, config)
    with pytest.raises(WeightFileError, match=r"missing \['blocks.1.attn.proj.bias'\]"):
        mae_torch.convert({k: v for k, v in tree.items() if k != "blocks.1.attn.proj.bias"}, config)
    with pytest.raises(WeightFileError, match=r"unexpected \['head.weight'\]"):
        mae_torch.convert(dict(tree, **{"head.weight": np.zeros((10, WIDTH))}), config)
    with pytest.raises(WeightFileError, match="no 'patch_embed.proj.weight'"):
        mae_torch.make_config({"conv.weight": np.zeros((4, 3, 3, 3))})


@pytest.mark.slow  # about 40 s on 2 cores: the optimizer-state init, the Orbax save and restore
def test_import_weights_writes_a_run_whose_encoder_is_torchs(reference, tmp_path):
    """The user's path: `maskgen import-weights --format mae` -> an Orbax run -> `mae:<workdir>` features."""
    from maskgen.recipes.mae import load_encoder_features
    from maskgen.weights import import_weights

    workdir = str(tmp_path / "run")
    summary = import_weights("mae", reference["pth"], workdir, {"num_heads": HEADS, "decoder_heads": DEC_HEADS},
                             ["compute_dtype=float32"])
    assert summary["parameters"] == sum(v.size for k, v in reference["state_dict"].items() if "pos_embed" not in k)
    features = load_encoder_features(workdir)
    tokens = np.asarray(features(jnp.asarray(reference["images"])))  # all patches visible
    model = TinyMAE().eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in reference["state_dict"].items()})
    with torch.no_grad():
        x = model.patch_embed(torch.from_numpy(reference["images"]).permute(0, 3, 1, 2)) + model.pos_embed[:, 1:]
        x = torch.cat([(model.cls_token + model.pos_embed[:, :1]).expand(len(x), -1, -1), x], dim=1)
        for block in model.blocks:
            x = block(x)
        want = model.norm(x).numpy()
    np.testing.assert_allclose(tokens, want, rtol=1e-4, atol=1e-4)
