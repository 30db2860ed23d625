"""EPIC in a PyTorch Lightning fit: a callback built on :class:`poisonlens.tracker.EpicTracker`.

Needs the optional extra (``pip install 'poisonlens[lightning]'``)::

    from poisonlens.lightning import EpicCallback

    epic = EpicCallback("runs/mine", labels=y_train, snapshot_loader=plain_loader,
                        subset_size=0.1, drop_after=1)
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


def EpicCallback(run_dir, labels, *, snapshot_loader, epochs: int | None = None, **tracker_options):  # noqa: N802
    """A Lightning ``Callback`` that runs EPIC on its schedule and records the run.

    Parameters
    ----------
    run_dir : the run directory to create
    labels : int of shape (n_samples,), the training labels in index order
    snapshot_loader : iterable of batches over the whole training set in index order, without
        augmentation; a batch is ``x`` or a tuple/list whose first item is ``x``
    epochs : the last epoch (default: the trainer's ``max_epochs``)
    **tracker_options : :class:`poisonlens.tracker.EpicTracker`'s options (``subset_size``,
        ``drop_after``, ``stop_after``, ``snapshot_every``, ``class_names``, ``images``,
        ``is_poison``, EPIC's options, ...)

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
    return _callback_class(pl)(run_dir, labels, snapshot_loader=snapshot_loader, epochs=epochs,
                               **tracker_options)  # fmt: skip


def _callback_class(pl):
    import numpy as np
    import torch

    from poisonlens.tracker import ActiveSampler, EpicTracker

    class _EpicCallback(pl.Callback):
        """See :func:`EpicCallback`."""

        def __init__(self, run_dir, labels, *, snapshot_loader, epochs, **tracker_options) -> None:
            self.run_dir, self.labels, self.loader = run_dir, labels, snapshot_loader
            self.epochs, self.options = epochs, tracker_options
            self.tracker: EpicTracker | None = None
            self._samplers: list[ActiveSampler] = []
            self.dropped: dict[int, np.ndarray] = {}  # epoch -> indices dropped then

        def sampler(self, *, shuffle: bool = True, seed: int | None = None) -> ActiveSampler:
            """The training DataLoader's sampler: the active examples, this rank's shard."""
            sampler = ActiveSampler(self, shuffle=shuffle, seed=self.options.get("seed", 0) if seed is None else seed)
            self._samplers.append(sampler)
            return sampler

        # ActiveSampler reads these two from its tracker; before fitting, every example is active
        @property
        def ctx(self):
            return None if self.tracker is None else self.tracker.ctx

        def active_indices(self) -> np.ndarray:
            if self.tracker is None:
                return np.arange(len(self.labels), dtype=np.int64)
            return self.tracker.active_indices()

        @property
        def active(self) -> np.ndarray:
            return np.ones(len(self.labels), bool) if self.tracker is None else self.tracker.active

        def _record(self, trainer, pl_module, epoch: int) -> None:
            tracker = self.tracker
            logits = features = None
            if tracker.wants_snapshot(epoch) and trainer.is_global_zero:
                logits, features = _forward(pl_module, self.loader)
            metrics = trainer.callback_metrics
            loss = metrics.get("train_loss", None)
            dropped = tracker.snapshot(epoch, logits=logits, features=features,
                                       train_loss=None if loss is None else float(loss))  # fmt: skip
            self.dropped[epoch] = dropped

        def on_train_start(self, trainer, pl_module) -> None:
            epochs = self.epochs if self.epochs is not None else trainer.max_epochs
            self.tracker = EpicTracker(self.run_dir, self.labels, epochs=epochs if epochs and epochs > 0 else None,
                                       **self.options)  # fmt: skip
            self._record(trainer, pl_module, 0)  # the snapshot before training

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            for sampler in self._samplers:
                sampler.set_epoch(trainer.current_epoch + 1)

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self._record(trainer, pl_module, trainer.current_epoch + 1)

        def on_train_end(self, trainer, pl_module) -> None:
            if self.tracker is not None:
                self.tracker.finish()

        def on_exception(self, trainer, pl_module, exception) -> None:
            if self.tracker is not None:
                self.tracker.__exit__(type(exception), exception, None)

    @torch.no_grad()
    def _forward(module, loader):
        # logits = the module's output; features = what its last Linear reads (a forward hook)
        linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
        seen: list = []
        hook = linears[-1].register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach())) if linears else None
        was_training = module.training
        module.eval()
        logits, feats = [], []
        try:
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

    return _EpicCallback
