"""The DiffRect label rectifier (docs/method.md, Networks, Latent diffusion): SCS + B_sem/image encoder + latent diffusion ε + label decoder.

One τ MLP (calibration guidance) conditions the context encoder (both encoders) and the label decoder; the
denoiser has its own MLP for the step t. Two entry points:
  training_losses  one forward of LFR training (eq. 9/11) and the single-step decode the losses use;
  rectify          sampling (DDIM by default, eq. 12 DDPM optional) + decode, without gradients.
Ablation switches (docs/method.md, Ablations): label_scheme="onehot" (w/o SCS), tau=None (w/o CG, zero embedding),
use_diffusion=False (LCC only: decode B_sem's condition latent directly).
"""
import torch
import torch.nn as nn

from networks.context_encoder import SemanticContextEncoder
from networks.denoiser import COND_INPUTS, LatentDenoiser
from networks.embeddings import EmbeddingMLP
from networks.gaussian_diffusion import GaussianDiffusion
from networks.label_decoder import LabelDecoder
from networks.semantic_coloring import encode_labels, label_channels

EMB_DIM = 512
LATENT_CHN = 256
SAMPLERS = ("ddim", "ddpm")


class Rectifier(nn.Module):
    def __init__(self, num_classes, *, label_scheme="color", T=10, base_chn=64, cond_input="skip", clip_latent=True,
                 use_diffusion=True, sample_steps=2, sampler="ddim", schedule="cosine"):
        super().__init__()
        if cond_input not in COND_INPUTS:
            raise ValueError(f"cond_input {cond_input!r} is unknown; choose one of {COND_INPUTS}")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler {sampler!r} is unknown; choose one of {SAMPLERS}")
        self.num_classes, self.label_scheme = num_classes, label_scheme
        self.cond_input, self.clip_latent = cond_input, clip_latent
        self.use_diffusion, self.sample_steps, self.sampler = use_diffusion, sample_steps, sampler
        self.tau_embed = EmbeddingMLP(128, EMB_DIM)  # shared by both encoders and the decoder
        self.context = SemanticContextEncoder(label_channels(num_classes, label_scheme), EMB_DIM)
        self.denoiser = LatentDenoiser(LATENT_CHN, base_chn, EMB_DIM)
        self.decoder = LabelDecoder(num_classes, EMB_DIM)
        self.diffusion = GaussianDiffusion(T, schedule)

    def embed_tau(self, tau, batch_size=None, device=None):
        """tau: (B,) float in [0, 1], a scalar (float or 0-d tensor, broadcast to `batch_size`), or None.
        -> (B, 512). None gives a zero embedding (the w/o-CG ablation); otherwise MLP(sinusoidal(τ·999))."""
        if tau is None:
            return torch.zeros(batch_size, EMB_DIM, device=device)
        tau = torch.as_tensor(tau, dtype=torch.float32, device=device)
        if tau.dim() == 0:
            tau = tau.expand(batch_size)
        return self.tau_embed(tau * 999)  # τ·999 so that τ = 0 (perfect label) looks like a clean step

    def _encode(self, image, cond_labels, tau):
        # image (B, 1, H, W), cond_labels (B, H, W) long -> emb (B, 512), image feats, condition feats (5 maps)
        emb = self.embed_tau(tau, image.shape[0], image.device)
        image_feats = self.context.image_features(image, emb)  # once per image, reused for the target
        cond_map = encode_labels(cond_labels, self.num_classes, self.label_scheme, image.dtype)
        return emb, image_feats, self.context(image, cond_map, emb, image_feats)

    def _model_fn(self, cond_latent):
        return lambda z_t, t: self.denoiser(z_t, t, cond_latent, self.cond_input)

    def training_losses(self, image, cond_labels, target_labels, tau, generator=None):
        """Paper eq. 9 (S2W, L_Lat-U) and eq. 11 (W2G, L_Lat-L): one training forward of the rectifier.
        image (B, 1, H, W) float, cond/target labels (B, H, W) long, tau (B,) / scalar / None.
        -> (latent MSE scalar, logits (B, C, H, W) decoded from the single-step ẑ_0 at the sampled t).
        `generator` (on image's device) draws t and the noise."""
        emb, image_feats, cond_feats = self._encode(image, cond_labels, tau)
        cond_latent = cond_feats[-1]  # (B, 256, H/16, W/16), with grad
        if not self.use_diffusion:  # LCC only: no latent rectification
            return image.new_zeros(()), self.decoder(cond_latent, cond_feats, emb)
        with torch.no_grad():  # target latent is detached anyway (docs/method.md, Latent diffusion); no graph kept
            target_map = encode_labels(target_labels, self.num_classes, self.label_scheme, image.dtype)
            target_latent = self.context(image, target_map, emb, image_feats)[-1]
        loss, z0_hat, _ = self.diffusion.training_loss(self._model_fn(cond_latent), target_latent, generator)
        return loss, self.decoder(z0_hat, cond_feats, emb)

    @torch.no_grad()
    def rectify(self, image, cond_labels, tau, generator=None):
        """Rectification (the sampling of eq. 12; DDIM by default): sample the rectified latent from noise (drawn
        with `generator`) conditioned on [image, cond_labels]
        and decode it -> logits (B, C, H, W). Leaves train/eval mode to the caller."""
        emb, _, cond_feats = self._encode(image, cond_labels, tau)
        cond_latent = cond_feats[-1]
        if not self.use_diffusion:
            return self.decoder(cond_latent, cond_feats, emb)
        kw = dict(generator=generator, clip=self.clip_latent, device=image.device, dtype=cond_latent.dtype)
        if self.sampler == "ddim":
            z0 = self.diffusion.ddim_sample(self._model_fn(cond_latent), cond_latent.shape, self.sample_steps, **kw)
        else:
            z0 = self.diffusion.p_sample_loop(self._model_fn(cond_latent), cond_latent.shape, **kw)
        return self.decoder(z0, cond_feats, emb)
