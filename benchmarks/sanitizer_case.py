"""A small run of every CUDA kernel, for compute-sanitizer (memcheck, racecheck)."""
import torch

import metafast
from metafast.ops import mlp_adapt, mlp_num_params, sgd_update

assert metafast.build_info()["cuda_kernels"], "metafast was built without CUDA kernels"
torch.manual_seed(0)
dev = "cuda"
# Workspaces: the sinusoid in float32 fits the default 48 KB of shared memory
# and in float64 (80 KB) needs the opt-in limit; [20, 33, 17, 5] fits; the
# last needs the global workspace in both dtypes.
cases = [(sizes, loss, dtype) for dtype in (torch.float32, torch.float64)
         for sizes, loss in (([1, 40, 40, 1], "mse"), ([20, 33, 17, 5], "cross_entropy"),
                             ([64, 256, 256, 5], "cross_entropy"))]
for sizes, loss, dtype in cases:
    torch.set_default_dtype(dtype)
    p = (torch.randn(mlp_num_params(sizes), device=dev) * 0.3).requires_grad_()
    lrs = torch.full_like(p, 0.01).requires_grad_()
    sx = torch.randn(3, 7, sizes[0], device=dev, requires_grad=True)
    sy = torch.randn(3, 7, sizes[-1], device=dev) if loss == "mse" else torch.randint(0, sizes[-1], (3, 7), device=dev)
    for first_order in (False, True):
        a, l = mlp_adapt(p, sx, sy, sizes, 3, lrs=lrs, activation="tanh", loss=loss, first_order=first_order)
        torch.autograd.grad(a.square().sum() + l.sum(), [p, lrs, sx])
torch.set_default_dtype(torch.float32)
params = [torch.randn(5, 3, device=dev), torch.randn(7, device=dev, dtype=torch.float64)]
grads = [torch.randn(4, 5, 3, device=dev), torch.randn(7, device=dev, dtype=torch.float64)]
sgd_update(params, grads, 0.1)
sgd_update([t.half() for t in params[:1]], [t.half() for t in grads[:1]], 0.1)
torch.cuda.synchronize()
print("sanitizer case done")
