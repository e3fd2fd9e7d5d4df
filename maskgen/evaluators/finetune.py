"""End-to-end fine-tuning: the encoder and a new linear head trained on the labels, scored on a held-out split.

MAE's fine-tuning protocol (He et al., arXiv 2111.06377, Appendix A.3; main_finetune.py and
util/lr_decay.py of facebookresearch/mae), at a size an evaluator can afford:

- The features are the recipe's `features` method (for MAE: global average pooling of the patch
  tokens), followed by a fresh LayerNorm (eps 1e-6, MAE's `fc_norm`) and a linear head (weight
  normal with std 2e-5, which is what timm's `trunc_normal_(std=2e-5)` draws with its absolute +-2
  bounds; bias 0).
- AdamW (betas 0.9 / 0.999, eps 1e-8, weight decay 0.05 on every kernel: biases, norms, the class
  token and position embeddings get none) at lr = base_lr x batch / 256, linear warm-up from 0 then
  half-cosine to 1e-6, per step.
- Layer-wise lr decay (BEiT, arXiv 2106.08254; MAE's `param_groups_lrd`): each parameter's lr is
  multiplied by layer_decay^(L + 1 - layer_id) with L encoder blocks: layer_id 0 for the patch
  embedding, class token and positions, i + 1 for block i, L + 1 for everything else (final norm,
  fc_norm, head). `layer_id` reads the id off a parameter's path; L is counted over the parameters
  the features read (`used_leaves`, from the jaxpr); the others (an MAE's decoder) are frozen.
- Cross-entropy with label smoothing 0.1; test accuracy after the last step.

Left out at this scale (documented in docs/mae_family.md): mixup, cutmix, drop path, RandAugment,
random erasing and RandomResizedCrop (the train split is used as it is, shuffled each epoch, the
last partial batch dropped), and the paper's reporting of the best epoch (this reports the last).
Unlike MAE's global-pool model, the pretrained final norm is kept (pooling reads the recipe's
features, which come after it) and `fc_norm` is added after pooling.

The train split (up to `max_examples`) is held in host memory and fed in shuffled batches through
`ctx.shard`, so the step runs data-parallel on the run's mesh, with the model and optimizer state
replicated on every device (an FSDP-sharded model is gathered: fine at evaluation sizes, not at
ViT-H). The evaluated variables are never modified (nothing is donated).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.extend import core as jax_core

from maskgen.config import integer, number, or_none
from maskgen.evaluators.base import EvalContext, EvalResult, register

ADAM_BETAS = (0.9, 0.999)  # main_finetune.py: torch.optim.AdamW's defaults
ADAM_EPS = 1e-8
MIN_LEARNING_RATE = 1e-6  # main_finetune.py --min_lr: the end of the cosine
FC_NORM_EPS = 1e-6  # models_vit.py: LayerNorm(eps=1e-6)
HEAD_INIT_STD = 2e-5  # main_finetune.py: trunc_normal_(head.weight, std=2e-5)
DEFAULT_EPOCHS = 50  # main_finetune.py --epochs (ViT-L/H; ViT-B uses 100)

# Path keys whose parameters sit below the first block (layer id 0), as in BEiT's get_layer_id_for_vit.
EMBEDDING_KEYS = frozenset({"patch_embed", "cls_token", "pos_embed", "pos_embedding", "position_embedding"})
# Of those, the ones that are tokens or positions (never weight-decayed: MAE's no_weight_decay()).
NO_DECAY_KEYS = frozenset({"cls_token", "pos_embed", "pos_embedding", "position_embedding"})
BLOCKS_KEY = "blocks"


def path_keys(path) -> tuple:
    """A jax key path -> its plain keys (dict keys, sequence indices, attribute names)."""
    out = []
    for entry in path:
        for attr in ("key", "idx", "name"):
            if hasattr(entry, attr):
                out.append(getattr(entry, attr))
                break
        else:
            out.append(str(entry))
    return tuple(out)


def block_index(keys: tuple) -> int | None:
    """The transformer block a parameter belongs to: the int key right after a "blocks" key, or None."""
    for before, key in zip(keys, keys[1:]):
        if before == BLOCKS_KEY and isinstance(key, int) and not isinstance(key, bool):
            return key
    return None


def layer_id(keys: tuple, num_blocks: int) -> int:
    """BEiT's / MAE's layer id of a parameter from its path keys (e.g. ("encoder", "transformer",
    "blocks", 3, "mlp", "fc1", "kernel")): 0 for embeddings (a key in EMBEDDING_KEYS anywhere on the
    path), i + 1 for block i (an int key under a "blocks" key), num_blocks + 1 for the rest (the
    final norm, the head)."""
    if any(key in EMBEDDING_KEYS for key in keys):
        return 0
    index = block_index(keys)
    if index is not None:
        if not 0 <= index < num_blocks:
            raise ValueError(f"parameter {'/'.join(map(str, keys))} is in block {index}, but the encoder has "
                             f"{num_blocks} blocks")
        return index + 1
    return num_blocks + 1


def lr_scale(layer: int, num_blocks: int, layer_decay: float) -> float:
    """The lr multiplier of layer id `layer`: layer_decay^(num_blocks + 1 - layer)."""
    return float(layer_decay ** (num_blocks + 1 - layer))


def gets_weight_decay(keys: tuple, ndim: int) -> bool:
    """MAE's rule (p.ndim == 1 or a no_weight_decay name -> no decay), stated for maskgen's layouts,
    where a head-split bias has more than one axis: kernels decay; biases, norms, tokens don't."""
    return ndim >= 2 and keys[-1] != "bias" and not any(key in NO_DECAY_KEYS for key in keys)


def used_leaves(fn: Callable, leaves: list, *args) -> list[bool]:
    """Which of `leaves` the output of `fn(leaves, *args)` depends on, from its jaxpr (nothing runs).

    A backward liveness pass: an equation is live when one of its outputs is needed (or it has
    effects), and then all its inputs are needed; inside calls that carry a sub-jaxpr with the same
    inputs and outputs (jit, remat, custom derivatives) the pass recurses, so only what is really
    read counts. A parameter an MAE's `features` never touches (the decoder) comes out False.
    """
    closed = jax.make_jaxpr(lambda ls: fn(ls, *args))(leaves)
    jaxpr = closed.jaxpr
    live = _live_inputs(jaxpr, [True] * len(jaxpr.outvars))
    return live[:len(jax.tree.leaves(leaves))]


def _sub_jaxpr(eqn):
    for value in eqn.params.values():
        inner = getattr(value, "jaxpr", value)  # ClosedJaxpr -> Jaxpr
        if isinstance(inner, jax_core.Jaxpr) and len(inner.invars) == len(eqn.invars) \
                and len(inner.outvars) == len(eqn.outvars):
            return inner
    return None


def _live_inputs(jaxpr, outputs_needed: list[bool]) -> list[bool]:
    needed = {v for v, n in zip(jaxpr.outvars, outputs_needed) if n and isinstance(v, jax_core.Var)}
    for eqn in reversed(jaxpr.eqns):
        outs = [isinstance(v, jax_core.Var) and v in needed for v in eqn.outvars]
        if not (any(outs) or eqn.effects):
            continue
        inner = _sub_jaxpr(eqn)
        ins = _live_inputs(inner, [o or bool(eqn.effects) for o in outs]) if inner is not None and not eqn.effects \
            else [True] * len(eqn.invars)
        needed.update(v for v, n in zip(eqn.invars, ins) if n and isinstance(v, jax_core.Var))
    return [v in needed for v in jaxpr.invars]


def parameter_groups(params, used: Any, layer_decay: float) -> tuple[Any, dict[str, tuple[float, bool]], int]:
    """MAE's param_groups_lrd on a pure-dict parameter tree.

    Args:
      params: the trainable tree ({"model": the run's params, "head": the new head} or any tree).
      used: a bool tree like `params`: False for parameters the forward pass never reads (frozen).
      layer_decay: the per-block lr decay.
    Returns:
      (labels, groups, num_blocks): a tree of group names like `params`; name -> (lr scale, weight
      decay?) ("frozen" -> (0.0, False)); and L, the number of blocks among the used parameters.
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    used_flat = jax.tree.leaves(used)
    keys = [path_keys(path) for path, _ in flat]
    blocks = {block_index(k) for k, u in zip(keys, used_flat) if u} - {None}
    num_blocks = max(blocks) + 1 if blocks else 0
    labels, groups = [], {"frozen": (0.0, False)}
    for k, (_, leaf), u in zip(keys, flat, used_flat):
        if not u:
            labels.append("frozen")
            continue
        lid, decay = layer_id(k, num_blocks), gets_weight_decay(k, np.ndim(leaf))
        name = f"layer_{lid}_{'decay' if decay else 'no_decay'}"
        groups[name] = (lr_scale(lid, num_blocks, layer_decay), decay)
        labels.append(name)
    return jax.tree.unflatten(treedef, labels), groups, num_blocks


def finetune_optimizer(labels, groups: dict[str, tuple[float, bool]], *, learning_rate: float, total_steps: int,
                       warmup_steps: int, weight_decay: float,
                       min_learning_rate: float = MIN_LEARNING_RATE) -> optax.GradientTransformation:
    """AdamW with one lr scale and weight-decay switch per group (torch's param groups), on MAE's
    per-step schedule: linear warm-up from 0 to `learning_rate`, then half-cosine to the minimum.
    Like torch's AdamW, the decay is multiplied by the group's lr (p -= lr x scale x (adam + wd x p))."""
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps, total_steps,
                                                  end_value=min(min_learning_rate, learning_rate))
    transforms = {}
    for name, (scale, decay) in groups.items():
        if name == "frozen":
            transforms[name] = optax.set_to_zero()
            continue
        transforms[name] = optax.chain(
            optax.scale_by_adam(b1=ADAM_BETAS[0], b2=ADAM_BETAS[1], eps=ADAM_EPS),
            optax.add_decayed_weights(weight_decay if decay else 0.0),
            optax.scale(scale),
            optax.scale_by_learning_rate(schedule),
        )
    return optax.multi_transform(transforms, labels)


def init_head(seed: int, width: int, num_classes: int) -> dict:
    """MAE's fc_norm (LayerNorm) + head (Linear, weight std 2e-5, bias 0), as host arrays."""
    kernel = HEAD_INIT_STD * np.random.default_rng(seed).standard_normal((width, num_classes))
    return {"fc_norm": {"scale": np.ones((width,), np.float32), "bias": np.zeros((width,), np.float32)},
            "head": {"kernel": kernel.astype(np.float32), "bias": np.zeros((num_classes,), np.float32)}}


def head_logits(head: dict, features: jax.Array) -> jax.Array:
    x = features.astype(jnp.float32)
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    x = (x - mean) / jnp.sqrt(var + FC_NORM_EPS) * head["fc_norm"]["scale"] + head["fc_norm"]["bias"]
    return x @ head["head"]["kernel"] + head["head"]["bias"]


def relative_change(new, old, used) -> jax.Array:
    """|new - old| / |old| over the parameters in `used` (a bool tree; all leaves as one vector)."""
    pairs = [(a.astype(jnp.float32), b.astype(jnp.float32))
             for a, b, u in zip(jax.tree.leaves(new), jax.tree.leaves(old), jax.tree.leaves(used)) if u]
    moved = sum(jnp.sum(jnp.square(a - b)) for a, b in pairs)
    size = sum(jnp.sum(jnp.square(b)) for _, b in pairs)
    return jnp.sqrt(moved / jnp.maximum(size, 1e-30))


def replicated_sharding(batch_array: jax.Array) -> jax.sharding.Sharding:
    """Full replication over the mesh a global batch array lives on (its device, off a mesh)."""
    sharding = batch_array.sharding
    if isinstance(sharding, jax.sharding.NamedSharding):
        return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    return jax.sharding.SingleDeviceSharding(next(iter(batch_array.devices())))


class FineTuner:
    """The jitted train step and predictor for one model and head shape (both baselines reuse them).

    The trained variables and the optimizer state live in `state_sharding` (replicated over the
    run's mesh: data-parallel fine-tuning); pinning the step's outputs to it keeps every step on one
    compilation.
    """

    def __init__(self, features: Callable, tx: optax.GradientTransformation, *, num_classes: int,
                 label_smoothing: float, state_sharding: jax.sharding.Sharding):
        def logits_fn(trainable, model_state, batch, rng):
            variables = {"params": trainable["model"], "model_state": model_state}  # model_state stays constant
            return head_logits(trainable["head"], features(variables, batch, rng))

        def loss_fn(trainable, model_state, batch, rng):
            targets = optax.smooth_labels(jax.nn.one_hot(batch["label"], num_classes), label_smoothing)
            return optax.softmax_cross_entropy(logits_fn(trainable, model_state, batch, rng), targets).mean()

        def step(trainable, opt_state, model_state, batch, rng):
            loss, grads = jax.value_and_grad(loss_fn)(trainable, model_state, batch, rng)
            updates, opt_state = tx.update(grads, opt_state, trainable)
            return optax.apply_updates(trainable, updates), opt_state, loss

        # No buffer donation: the first step's input holds the evaluated variables themselves.
        self.step = jax.jit(step, out_shardings=state_sharding)
        self.init = jax.jit(tx.init, out_shardings=state_sharding)
        self.place = lambda tree: jax.device_put(tree, state_sharding)
        self.predict = jax.jit(lambda *args: jnp.argmax(logits_fn(*args), -1))


@register("finetune")
class FineTune:
    """End-to-end fine-tuning (module docstring).

    Arguments (defaults: main_finetune.py's, the ViT-L/H recipe of facebookresearch/mae's
    FINETUNE.md; its ViT-B recipe is 100 epochs, base lr 5e-4, layer decay 0.65): `steps`, or
    `epochs` over the train split (neither: 50 epochs); `batch_size` (1024, the paper's; cut to the
    train split's size); `base_learning_rate` (1e-3; lr = base x batch / 256); `layer_decay` (0.75);
    `weight_decay` (0.05); `warmup_fraction` (0.1: 5 of 50 epochs); `label_smoothing` (0.1);
    `max_examples` (None: the
    first N examples of each split); `seed` (data order and head init); `baselines` (() or
    ("random_init",), seeded by `random_init_seed`).

    Scalars, for name "model" and each baseline ("random_init": the same
    fine-tune from a freshly initialised model): accuracy_<name> (test top-1 after the last step),
    final_loss_<name> (mean train loss over the last tenth of the steps) and relative_change_<name>
    (|fine-tuned - start| / |start| over the trained model parameters: how far the encoder moved)."""

    ARG_RULES = {"steps": or_none(integer(min=1)), "epochs": or_none(integer(min=1)), "batch_size": integer(min=1),
                 "base_learning_rate": number(0, min_open=True), "layer_decay": number(0, 1, min_open=True),
                 "weight_decay": number(0), "warmup_fraction": number(0, 1, max_open=True),
                 "label_smoothing": number(0, 1, max_open=True), "max_examples": or_none(integer(min=1)),
                 "seed": integer(min=0), "random_init_seed": integer(min=0)}
    BASELINES = ("random_init",)

    def __init__(self, train_split: str = "train", test_split: str = "test", baselines: tuple = (),
                 steps: int | None = None, epochs: int | None = None, batch_size: int = 1024,
                 base_learning_rate: float = 1e-3, layer_decay: float = 0.75, weight_decay: float = 0.05,
                 warmup_fraction: float = 0.1, label_smoothing: float = 0.1, max_examples: int | None = None,
                 seed: int = 0, random_init_seed: int = 12345):
        unknown = set(baselines) - set(self.BASELINES)
        if unknown or isinstance(baselines, str):
            raise ValueError(f"finetune: unknown baselines {sorted(unknown) if unknown else baselines!r}; "
                             f"valid: a tuple of {list(self.BASELINES)}")
        if steps is not None and epochs is not None:
            raise ValueError(f"finetune: give steps ({steps}) or epochs ({epochs}), not both")
        self.train_split, self.test_split, self.baselines = train_split, test_split, tuple(baselines)
        self.steps, self.epochs, self.batch_size = steps, epochs, batch_size
        self.base_learning_rate, self.layer_decay, self.weight_decay = base_learning_rate, layer_decay, weight_decay
        self.warmup_fraction, self.label_smoothing = warmup_fraction, label_smoothing
        self.max_examples, self.seed, self.random_init_seed = max_examples, seed, random_init_seed

    def _collect(self, ctx: EvalContext, split: str) -> dict[str, np.ndarray]:
        """Every field of a split's (first `max_examples`) model inputs, as host arrays."""
        parts: dict[str, list] = {}
        for batch, valid in ctx.batches(split, self.max_examples):
            for key, value in ctx.to_host(batch).items():
                parts.setdefault(key, []).append(np.asarray(value)[valid])
        if not parts:
            raise ValueError(f"finetune: the {split!r} split is empty")
        if "label" not in parts:
            raise ValueError(f"finetune: needs labelled data (a 'label' field); the {split!r} batches hold {sorted(parts)}")
        return {key: np.concatenate(value) for key, value in parts.items()}

    def _batch_size(self, ctx: EvalContext, rows: int) -> int:
        """The batch actually used: `batch_size`, cut to the train split, a multiple of the data-parallel devices."""
        multiple = ctx.batch_multiple
        if self.batch_size % multiple:
            raise ValueError(f"finetune: batch_size={self.batch_size} does not split over {multiple} data-parallel "
                             "devices; use a multiple of it")
        batch = min(self.batch_size, rows) // multiple * multiple
        if batch < 1:
            raise ValueError(f"finetune: the train split has {rows} examples, fewer than the {multiple} data-parallel "
                             "devices")
        return batch

    def run(self, ctx: EvalContext) -> EvalResult:
        if ctx.method is None or ctx.shard is None:
            raise ValueError("finetune: the evaluation context gives no `method`/`shard` (maskgen.runs.make_eval_context "
                             "provides both)")
        features = ctx.method("features")
        train = self._collect(ctx, self.train_split)
        rows = len(train["label"])
        batch_size = self._batch_size(ctx, rows)
        steps_per_epoch = rows // batch_size
        total = self.steps or (self.epochs or DEFAULT_EPOCHS) * steps_per_epoch
        warmup = min(int(round(self.warmup_fraction * total)), total - 1)
        test = self._collect(ctx, self.test_split)
        num_classes = int(max(train["label"].max(), test["label"].max())) + 1

        def batches():
            """Shuffled each epoch, the last partial batch dropped; the same order on every process
            (each takes its own rows in ctx.shard) and for every candidate."""
            order = np.random.default_rng(self.seed)
            while True:
                permutation = order.permutation(rows)
                for start in range(0, steps_per_epoch * batch_size, batch_size):
                    rows_now = permutation[start:start + batch_size]
                    yield ctx.shard({key: value[rows_now] for key, value in train.items()})

        first = next(batches())
        step_rng = jax.random.key(self.seed)
        template = self._trainable(ctx.params, features, first, num_classes)
        used = {"model": self._used(features, ctx.params, first),
                "head": jax.tree.map(lambda _: True, template["head"])}
        labels, groups, _ = parameter_groups(template, used, self.layer_decay)
        tx = finetune_optimizer(labels, groups, learning_rate=self.base_learning_rate * batch_size / 256,
                                total_steps=total, warmup_steps=warmup, weight_decay=self.weight_decay)
        tuner = FineTuner(features, tx, num_classes=num_classes, label_smoothing=self.label_smoothing,
                          state_sharding=replicated_sharding(first["label"]))

        candidates = {"model": ctx.params}
        if "random_init" in self.baselines:
            candidates["random_init"] = ctx.init_params(self.random_init_seed)
        change = jax.jit(functools.partial(relative_change, used=used["model"]))
        scalars = {}
        for name, variables in candidates.items():
            # Every candidate sees the same batches and head initialisation.
            stream = batches()
            trainable = tuner.place(self._trainable(variables, features, first, num_classes))
            model_state = variables["model_state"]
            opt_state = tuner.init(trainable)
            losses = []
            for step in range(total):
                trainable, opt_state, loss = tuner.step(trainable, opt_state, model_state, next(stream),
                                                        jax.random.fold_in(step_rng, step))
                losses.append(loss)
            tail = max(1, total // 10)
            scalars[f"final_loss_{name}"] = float(np.mean(ctx.to_host(losses[-tail:])))
            scalars[f"accuracy_{name}"] = self._accuracy(ctx, tuner, trainable, model_state, step_rng)
            scalars[f"relative_change_{name}"] = float(ctx.to_host(change(trainable["model"], variables["params"])))
        return EvalResult(scalars=scalars)

    def _trainable(self, variables, features, example, num_classes: int) -> dict:
        width = jax.eval_shape(features, variables, example, jax.random.key(0)).shape[-1]
        return {"model": variables["params"], "head": init_head(self.seed, width, num_classes)}

    @staticmethod
    def _used(features, variables, example) -> Any:
        """A bool tree over variables["params"]: the parameters `features` reads."""
        leaves, treedef = jax.tree.flatten(variables["params"])

        def on_leaves(ls, batch):
            return features({"params": jax.tree.unflatten(treedef, ls), "model_state": variables["model_state"]},
                            batch, jax.random.key(0))

        return jax.tree.unflatten(treedef, used_leaves(on_leaves, leaves, example))

    def _accuracy(self, ctx: EvalContext, tuner: FineTuner, trainable, model_state, rng) -> float:
        correct = total = 0
        for batch, valid in ctx.batches(self.test_split, self.max_examples):
            predicted = np.asarray(ctx.to_host(tuner.predict(trainable, model_state, batch, rng)))[valid]
            labels = np.asarray(ctx.to_host(batch["label"]))[valid]
            correct += int((predicted == labels).sum())
            total += int(valid.sum())
        return correct / total
