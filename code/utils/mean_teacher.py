"""The mean teacher shared by Mean Teacher, UA-MT and ICT: a copy of the student whose weights are an EMA of the student's."""
import copy

import torch


def make_teacher(student):
    """A copy of the student that receives no gradients (its weights only move by `ema_update`)."""
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher, student, decay, iteration):
    """teacher <- a teacher + (1 - a) student with a = min(1 - 1/(iteration + 1), decay), so the teacher follows
    the student closely at first (SSL4MIS). Parameters only: BN statistics of the teacher are its own (it runs in
    train mode, as in SSL4MIS). Returns a."""
    a = min(1.0 - 1.0 / (iteration + 1), decay)
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(a).add_(s.detach(), alpha=1.0 - a)
    return a


def noisy(x):
    """The teacher's input perturbation of SSL4MIS: Gaussian noise, sigma 0.1, clipped to +-0.2. (B,1,H,W)."""
    return x + torch.clamp(torch.randn_like(x) * 0.1, -0.2, 0.2)
