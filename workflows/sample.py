"""Videos for your prompts from a trained model folder: ``pyflyte run workflows/sample.py sample_wf --ddm_uri
outputs/tiny/results/ddm --prompts '["a huge pink wedge getting smaller on a black checkerboard"]'``.

The folder is a DDM, a monolith or a distilled student (local or a bucket URI); the files land in ``out``. The same
without Flyte: ``ddm-sample outputs/tiny/results/ddm --prompt "..."``.
"""

from flytekit import workflow

from tasks.sample import sample_model_task


@workflow
def sample_wf(
    ddm_uri: str,
    prompts: list[str],
    out: str = "samples",
    num_inference_steps: int = 20,
    guidance_scale: float = 4.0,
    strategy: str = "topk",
    top_k: int = 2,
    seed: int = 0,
) -> str:
    """Returns the folder holding one GIF and MP4 per prompt, samples.png and prompts.json.

    Args:
        ddm_uri: a model folder or URI (results/ddm, results/monolith, a student).
        prompts: captions, as a JSON list on the command line.
        out: destination folder or bucket URI.
        num_inference_steps: Euler steps.
        guidance_scale: CFG scale (1 turns CFG off).
        strategy: routing of a DDM: top1, topk, full, sample, expert:<id> or a schedule.
        top_k: experts mixed by topk.
        seed: noise seed.
    """
    return sample_model_task(
        model_uri=ddm_uri,
        prompts=prompts,
        out=out,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        strategy=strategy,
        top_k=top_k,
        seed=seed,
    )
