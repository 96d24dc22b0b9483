function [y, idx] = nvp_pool_max(xp, ho, wo, ph, pw, st)
% NVP_POOL_MAX  Max pooling of the -Inf-padded xp. idx is the linear index (into xp) of the
%   winner of each window: windows are scanned column by column (width outer, height inner)
%   and only a strictly larger value takes over, as MatConvNet's CPU code does, so among equal
%   values the first in MATLAB's column-major order gets the gradient.
[hp, wp, c, n] = size(xp);
y = -inf(ho, wo, c, n, class(xp));
idx = zeros(ho, wo, c, n);
[r0, c0, z0, n0] = ndgrid(1 + (0:ho - 1) * st(1), 1 + (0:wo - 1) * st(2), 1:c, 1:n);
for j = 1:pw
  for i = 1:ph
    lin = sub2ind([hp, wp, c, n], r0 + i - 1, c0 + j - 1, z0, n0);
    v = xp(lin);
    better = v > y;
    y(better) = v(better);
    idx(better) = lin(better);
  end
end
end
