"""UCBSampler on a toy problem: tune a made-up training run (a formula, no torch).

Run ``python -m metab_opt.ucbtree.example`` (or ``python metab_opt/ucbtree/example.py``).
"""

from __future__ import annotations

import math

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, Trial

from metab_opt.ucbtree import DOWN, UP, Roles, UCBSampler

# The search space, in exploration order: the sampler steps the first knobs first.
SEARCH_SPACE = {
    "lr": FloatDistribution(1e-4, 1e-1, log=True),
    "width": IntDistribution(16, 512, log=True),
    "dropout": FloatDistribution(0.0, 0.5, step=0.05),
    "epochs": IntDistribution(2, 20, step=2),
    "optimizer": CategoricalDistribution(["sgd", "adam"]),
    "seed": IntDistribution(0, 2**31 - 1),
}

ROLES = Roles(
    seed="seed",  # replicates differ only in the seed; only the replicate rule changes it
    duration="epochs",  # lengthened when the parent's validation loss was still falling
    spread=("lr", "width"),  # stepped once each from every block's root
    degeneracy=(("dropout", UP), ("width", DOWN)),  # the cure for an overfit streak
)


def overfit(trial: FrozenTrial) -> bool:
    """The degeneracy-break rule's diagnosis: the training loss is tiny, the validation loss
    is not (the toy's model memorised its data)."""
    train = trial.user_attrs.get("train_loss")
    return train is not None and trial.value is not None and train < 0.05 and trial.value > 0.5


def objective(trial: Trial) -> float:
    lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    width = trial.suggest_int("width", 16, 512, log=True)
    dropout = trial.suggest_float("dropout", 0.0, 0.5, step=0.05)
    epochs = trial.suggest_int("epochs", 2, 20, step=2)
    optimizer = trial.suggest_categorical("optimizer", ["sgd", "adam"])
    seed = trial.suggest_int("seed", 0, 2**31 - 1)
    # The best run: lr 3e-3, width 128, dropout 0.2, adam, as many epochs as possible.
    floor = ((math.log10(lr) + 2.5) ** 2 + 0.3 * math.log2(width / 128) ** 2
             + 4 * (dropout - 0.2) ** 2 + (0.0 if optimizer == "adam" else 0.3))
    noise = (seed * 2654435761 % 1000) / 1000 * 0.02  # the training seed's luck
    loss = floor
    for epoch in range(1, epochs + 1):
        loss = floor + 1.5 / epoch + noise
        trial.report(loss, epoch)  # the curve the duration rule reads
    trial.set_user_attr("train_loss", max(0.0, loss - 0.3 - dropout))
    return loss


def main(n_trials: int = 60, seed: int = 0) -> optuna.Study:
    sampler = UCBSampler(
        search_space=SEARCH_SPACE,
        roles=ROLES,
        n_iter_block=12,
        survey=4,  # trials 1-4: draw every knob but the seed and epochs over the whole space
        seed=seed,
        converged=0.3,  # below this loss a run has converged (the study minimizes)
        failed=3.0,  # above it, a run has failed
        degenerate=overfit,
        follow_gain=0.01,  # a step that cut the loss by this much is taken again
        value_name="loss",
    )
    study = optuna.create_study(direction="minimize", sampler=sampler)
    study.optimize(objective, n_trials=n_trials)
    return study


if __name__ == "__main__":
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    done = main()
    for t in done.trials:
        print(f"{t.number:3d} {t.user_attrs['strategy']:16s} parent {t.user_attrs['parent_id']:3d} "
              f"loss {t.value:7.3f}  {t.user_attrs['mutation']}")
    print(f"best loss {done.best_value:.3f} with {done.best_params}")
