"""EPIC in a PyTorch Lightning fit: a callback built on :class:`poisonlens.tracker.EpicTracker`.

Needs the optional extra (``pip install 'poisonlens[lightning]'``)::

    from poisonlens.lightning import EpicCallback

    epic = EpicCallback("runs/mine", y_train, snapshot_loader=plain_loader,
                        options=poisonlens.TrackerOptions(subset_size=0.1, drop_after=1))
    train_loader = DataLoader(train_set, batch_size=128, sampler=epic.sampler())
    trainer = L.Trainer(max_epochs=20, callbacks=[epic], use_distributed_sampler=False)
    trainer.fit(model, train_loader)

At the epochs the schedule names (0 before training, then every ``snapshot_every``), the
callback passes ``snapshot_loader`` (the whole training set in index order, no augmentation,
no shuffling) through the model in eval mode, taking the logits from the model's output and
the penultimate features from the input of its last ``nn.Linear`` (a forward hook), and hands
them to the tracker. The drops take effect at the next epoch's sampling through
:meth:`EpicCallback.sampler` (an :class:`poisonlens.tracker.ActiveSampler`, which shards
itself under DDP: hence ``use_distributed_sampler=False``). Under DDP, rank 0 makes the pass
and writes the run; every rank receives the same drops.
"""

from __future__ import annotations

from poisonlens.errors import InputError

INSTALL = "pip install 'poisonlens[lightning]'"


def _lightning():
    try:
        import lightning.pytorch as pl
    except ImportError:
        raise InputError("lightning", f"PyTorch Lightning is not installed: {INSTALL}") from None
    return pl


def EpicCallback(run_dir, labels, *, snapshot_loader, options=None, **examples):  # noqa: N802
    """A Lightning ``Callback`` that runs EPIC on its schedule and records the run.

    Parameters
    ----------
    run_dir : str or os.PathLike
        The run directory to create.
    labels : int array of shape (n_samples,)
        The training labels in index order.
    snapshot_loader : iterable
        Batches over the whole training set in index order, without augmentation; a batch is
        ``x`` or a tuple/list whose first item is ``x``.
    options : poisonlens.TrackerOptions or None
        EPIC's schedule and options (:class:`poisonlens.tracker.TrackerOptions`); its
        ``epochs`` defaults to the trainer's ``max_epochs``.
    **examples
        :class:`poisonlens.tracker.EpicTracker`'s per-example arrays: ``images``,
        ``is_poison``, ``base_index``.

    Returns
    -------
    a ``lightning.pytorch.Callback`` with ``tracker`` (the EpicTracker, made when fitting starts)
    and ``sampler()``

    Raises
    ------
    InputError
        when PyTorch Lightning is not installed (the line says how to install it).
    """
    pl = _lightning()
    return _callback_class(pl)(run_dir, labels, snapshot_loader=snapshot_loader, options=options, **examples)


def _callback_class(pl):
    """The callback class: :class:`_EpicHooks` on Lightning's ``Callback``."""
    return type("EpicCallback", (_EpicHooks, pl.Callback), {"__doc__": "See :func:`EpicCallback`."})


class _EpicHooks:
    """The callback's hooks and the tracker-like face its samplers read (made before the tracker)."""

    def __init__(self, run_dir, labels, *, snapshot_loader, options, **examples) -> None:
        from poisonlens.tracker import TrackerOptions

        self.run_dir, self.labels, self.loader = run_dir, labels, snapshot_loader
        self.options = TrackerOptions() if options is None else options
        self.examples = examples
        self.tracker = None
        self._samplers: list = []
        self.dropped: dict = {}  # epoch -> int64 indices dropped then

    def sampler(self, *, shuffle: bool = True, seed: int | None = None):
        """The training DataLoader's sampler: the active examples, this rank's shard.

        Parameters
        ----------
        shuffle : bool
            False visits the active examples in index order.
        seed : int or None
            The shuffle's seed (None: the options' ``seed``).

        Returns
        -------
        poisonlens.tracker.ActiveSampler
        """
        from poisonlens.tracker import ActiveSampler

        sampler = ActiveSampler(self, shuffle=shuffle, seed=self.options.seed if seed is None else seed)
        self._samplers.append(sampler)
        return sampler

    # ActiveSampler reads these from its tracker; before fitting, every example is active
    @property
    def ctx(self):
        """The tracker's place among the processes (alone until fitting starts)."""
        from poisonlens.device import ALONE

        return ALONE if self.tracker is None else self.tracker.ctx

    def active_indices(self):
        """int64 of shape (n_active,): the examples still trained on."""
        import numpy as np

        if self.tracker is None:
            return np.arange(len(self.labels), dtype=np.int64)
        return self.tracker.active_indices()

    @property
    def active(self):
        """bool of shape (n_samples,): the examples still trained on."""
        import numpy as np

        return np.ones(len(self.labels), bool) if self.tracker is None else self.tracker.active

    def _record(self, trainer, pl_module, epoch: int) -> None:
        logits = features = None
        if self.tracker.wants_snapshot(epoch) and self.tracker.ctx.is_main:
            logits, features = _forward(pl_module, self.loader)
        loss = trainer.callback_metrics.get("train_loss", None)
        self.dropped[epoch] = self.tracker.snapshot(epoch, logits=logits, features=features,
                                                    train_loss=None if loss is None else float(loss))  # fmt: skip

    def on_train_start(self, trainer, pl_module) -> None:
        """Make the tracker (epochs: the options', else the trainer's) and take the snapshot
        before training."""
        from dataclasses import replace

        from poisonlens.tracker import EpicTracker

        options = self.options
        if options.epochs is None:
            epochs = trainer.max_epochs
            options = replace(options, epochs=epochs if epochs and epochs > 0 else None)
        self.tracker = EpicTracker(self.run_dir, self.labels, options, **self.examples)
        self._record(trainer, pl_module, 0)  # the snapshot before training

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        """Give the samplers the coming epoch's shuffle."""
        for sampler in self._samplers:
            sampler.set_epoch(trainer.current_epoch + 1)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        """Record the epoch just trained (a snapshot at the schedule's epochs)."""
        self._record(trainer, pl_module, trainer.current_epoch + 1)

    def on_train_end(self, trainer, pl_module) -> None:
        """Mark the run finished."""
        if self.tracker is not None:
            self.tracker.finish()

    def on_exception(self, trainer, pl_module, exception) -> None:
        """Record the run as failed, with the error."""
        if self.tracker is not None:
            self.tracker.__exit__(type(exception), exception, None)


def _forward(module, loader):
    # logits = the module's output; features = what its last Linear reads (a forward hook)
    import torch

    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    seen: list = []
    hook = linears[-1].register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach())) if linears else None
    was_training = module.training
    module.eval()
    logits, feats = [], []
    try:
        with torch.no_grad():
            for batch in loader:
                x = batch[0] if isinstance(batch, list | tuple) else batch
                seen.clear()
                logits.append(module(x.to(module.device)).float().cpu())
                if seen:
                    feats.append(seen[-1].float().reshape(len(x), -1).cpu())
    finally:
        if hook is not None:
            hook.remove()
        module.train(was_training)
    return torch.cat(logits), (torch.cat(feats) if len(feats) == len(logits) else None)
