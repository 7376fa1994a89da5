"""Diffusion-model building blocks: noise schedules, samplers, the sampling loop, training losses."""
from .schedules import (  # noqa: F401
    VESDE,
    VPSDE,
    DiscreteSchedule,
    exponential_sigmas,
    karras_sigmas,
    make_schedule,
)
from .samplers import (  # noqa: F401
    SAMPLERS,
    DDIMSampler,
    DDPMSampler,
    DPMSolverMultistepSampler,
    EulerAncestralSampler,
    EulerMaruyamaSampler,
    EulerSampler,
    HeunSampler,
    ProbabilityFlowSampler,
    Sampler,
    SamplerOutput,
    get_sampler,
)
from .sampling import NonFiniteSampleError, sample  # noqa: F401
from .gaussian_diffusion import GaussianDiffusion  # noqa: F401
from .latent import LatentDataset, LatentDiffusion  # noqa: F401
