"""Diffusion-model building blocks: noise schedules, samplers, losses."""
from .schedules import (  # noqa: F401
    VESDE,
    VPSDE,
    DiscreteSchedule,
    exponential_sigmas,
    karras_sigmas,
    make_schedule,
)
