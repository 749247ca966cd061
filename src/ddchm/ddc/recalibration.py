"""Encodings that follow a learning model, and what a DDC machine's checkpoint holds.

Recalibration: the encodings T_l are calibrated on prior samples (``LayerEncoding.calibrate``:
unit scales, projection centres, thresholds). As theta moves, the dreams drift from that
calibration; a layer whose drift (``LayerEncoding.drift``) exceeds ``recalibrate_tolerance``
is recalibrated on the step's dreams, and the recogniser's heads of that layer are refitted on
the new encodings of the same dreams, so r keeps predicting what the maps regress on.
"""

from __future__ import annotations

import torch

from ddchm.ddc.recogniser_training import sleep_targets


@torch.no_grad()
def recalibrate(machine, sleep: list[torch.Tensor], force: bool = False) -> list[int]:
    """Recalibrate every encoding of ``machine`` whose drift on these dreams exceeds the
    tolerance (all of them if ``force``; whitened ones never: a whitener is tied to one
    calibration, spec s. 9), refit the recogniser's heads of those layers, and refresh the
    recogniser's input scaling. Returns the recalibrated layers (1-based)."""
    tolerance = machine.options.encodings.recalibrate_tolerance
    moved = [
        l
        for l, encoding in enumerate(machine.encodings, start=1)
        if not encoding.whitened and (force or encoding.drift(sleep[l]) > tolerance)
    ]
    if machine.options.recogniser.input_scaling:
        machine.recognition.set_input_scaling(sleep[0])
    if not moved:
        return moved
    ratios = {}
    for l in moved:
        old_scale = machine.encodings[l - 1].unit_scale.clone()
        machine.encodings[l - 1].calibrate(sleep[l])
        ratios[l - 1] = old_scale / machine.encodings[l - 1].unit_scale
    if hasattr(machine.recognition, "refit_heads"):
        targets = {l - 1: machine.encodings[l - 1](sleep[l]) for l in moved}
        if machine.options.recogniser.sleep_targets == "snis":  # as the recogniser regresses
            smoothed, _ = sleep_targets(machine.model, sleep, list(targets.values()))
            targets = dict(zip(targets, smoothed))
        machine.recognition.refit_heads(sleep[0], targets, ratios)
    return moved


def machine_state(machine) -> dict:
    """Everything a resumed DDC machine needs to take the same steps: tensors, numbers and
    strings only (checkpoints are read with ``weights_only=True``)."""
    training = machine.recogniser_training
    return {
        "encodings": machine.encodings.state_dict(),
        "recognition": machine.recognition.state_dict(),
        "recognition_extra": machine.recognition.extra_state(),
        "optimizer": machine.optimizer.state_dict(),
        "generator": machine.generator.get_state(),
        "steps": machine.steps,
        "recalibrations": machine.recalibrations,
        "last_recognition_loss": training.last_loss,
        "last_wake_ess": training.last_wake_ess,
        "wake_states": machine.particles.state_dict(),
        "wake_phase": machine.wake_phase.state_dict(),
    }


def load_machine_state(machine, state: dict) -> None:
    """The inverse of :func:`machine_state` (a checkpoint written before the named wake phases
    carries no ``wake_phase``: the machine's own then stands)."""
    # one encoding at a time: LayerEncoding.load_state_dict resizes the whitening buffers
    for i, encoding in enumerate(machine.encodings):
        prefix = f"{i}."
        encoding.load_state_dict(
            {k[len(prefix) :]: v for k, v in state["encodings"].items() if k.startswith(prefix)}
        )
    machine.recognition.load_state_dict(state["recognition"])
    machine.recognition.load_extra_state(state["recognition_extra"])
    machine.optimizer.load_state_dict(state["optimizer"])
    machine.generator.set_state(state["generator"])
    machine.steps = state["steps"]
    machine.recalibrations = state.get("recalibrations", 0)
    training = machine.recogniser_training
    training.last_loss = state.get("last_recognition_loss", float("nan"))
    training.last_wake_ess = state.get("last_wake_ess", float("nan"))
    machine.particles.load_state_dict(state.get("wake_states"), machine.device, machine.dtype)
    if "wake_phase" in state:
        machine.wake_phase.load_state_dict(state["wake_phase"])
