"""AUTOMATIC1111's options, as its `GET /sdapi/v1/options` answers them out of the box.

A1111 answers every option it has, each with its value or its default; clients read
the ones they know (the model, the image format, clip skip...) and write back what
they change. These are the defaults of A1111 1.10's settings that clients read, or
write and read back. A user's own options (the `ApiOptions` row) are laid over them,
and the model is the user's (see `generation.api.a1111`).

Of these, Imagegen honours `sd_model_checkpoint`, `CLIP_stop_at_last_layers`,
`eta_noise_seed_delta`, `samples_format` and `jpeg_quality`; the others are kept and
answered as written.
"""

from __future__ import annotations

from typing import Any

# The image formats the API can answer in (A1111's `samples_format`), by the name a
# client writes: PIL's format.
IMAGE_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}

DEFAULTS: dict[str, Any] = {
    # Saving images
    "samples_save": True,
    "samples_format": "png",
    "samples_filename_pattern": "",
    "save_images_add_number": True,
    "grid_save": True,
    "grid_format": "png",
    "enable_pnginfo": True,
    "save_txt": False,
    "jpeg_quality": 80,
    "webp_lossless": False,
    "export_for_4chan": True,
    "img_downscale_threshold": 4.0,
    "target_side_length": 4000,
    "img_max_size_mp": 200,
    "save_incomplete_images": False,
    "outdir_samples": "",
    "outdir_txt2img_samples": "outputs/txt2img-images",
    "outdir_img2img_samples": "outputs/img2img-images",
    "outdir_extras_samples": "outputs/extras-images",
    "outdir_grids": "",
    "outdir_txt2img_grids": "outputs/txt2img-grids",
    "outdir_img2img_grids": "outputs/img2img-grids",
    "outdir_save": "log/images",
    "save_to_dirs": True,
    # Face restoration and upscaling
    "face_restoration": False,
    "face_restoration_model": "CodeFormer",
    "code_former_weight": 0.5,
    "upscaler_for_img2img": None,
    # Stable Diffusion
    "sd_model_checkpoint": None,
    "sd_checkpoint_hash": "",
    "sd_checkpoints_limit": 1,
    "sd_checkpoints_keep_in_cpu": True,
    "sd_unet": "Automatic",
    "enable_emphasis": True,
    "enable_batch_seeds": True,
    "comma_padding_backtrack": 20,
    "CLIP_stop_at_last_layers": 1,
    "upcast_attn": False,
    "randn_source": "GPU",
    "tiling": False,
    "sdxl_crop_top": 0,
    "sdxl_crop_left": 0,
    # VAE
    "sd_vae": "Automatic",
    "sd_vae_overrides_per_model_preferences": True,
    "auto_vae_precision": True,
    "sd_vae_encode_method": "Full",
    "sd_vae_decode_method": "Full",
    # img2img
    "inpainting_mask_weight": 1.0,
    "initial_noise_multiplier": 1.0,
    "img2img_extra_noise": 0.0,
    "img2img_color_correction": False,
    "img2img_fix_steps": False,
    "img2img_background_color": "#ffffff",
    # Optimizations
    "cross_attention_optimization": "Automatic",
    "s_min_uncond": 0.0,
    "token_merging_ratio": 0.0,
    "token_merging_ratio_img2img": 0.0,
    "token_merging_ratio_hr": 0.0,
    "pad_cond_uncond": False,
    "persistent_cond_cache": True,
    "batch_cond_uncond": True,
    # Extra networks
    "extra_networks_default_multiplier": 1.0,
    "sd_hypernetwork": "None",
    # Live previews
    "live_previews_enable": True,
    "live_previews_image_format": "png",
    "show_progress_every_n_steps": 10,
    "show_progress_type": "Approx NN",
    "live_preview_refresh_period": 1000,
    # Sampler parameters
    "hide_samplers": [],
    "eta_ddim": 0.0,
    "eta_ancestral": 1.0,
    "ddim_discretize": "uniform",
    "s_churn": 0.0,
    "s_tmin": 0.0,
    "s_tmax": 0.0,
    "s_noise": 1.0,
    "k_sched_type": "Automatic",
    "sigma_min": 0.0,
    "sigma_max": 0.0,
    "rho": 0.0,
    "eta_noise_seed_delta": 0,
    "always_discard_next_to_last_sigma": False,
    # Infotext and user interface
    "add_model_hash_to_info": True,
    "add_model_name_to_info": True,
    "add_version_to_infotext": True,
    "return_grid": True,
    "do_not_show_images": False,
    "quicksettings_list": ["sd_model_checkpoint"],
    "disabled_extensions": [],
    "disable_all_extensions": "none",
}
