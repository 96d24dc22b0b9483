function [y, lsum] = nvp_lrn(x, param)
% NVP_LRN  vl_nnnormalize with exact pow: y = x .* (kappa + alpha * S).^-beta, S the sum of
%   squares over the channel window [c - floor((N-1)/2), c + ceil((N-1)/2)]. Returns
%   lsum = kappa + alpha * S for the backward pass. N >= 2D gives NetVLAD's L2 layers.
m1 = floor((param(1) - 1) / 2);
lsum = param(2) + param(3) * nvp_lrn_window(x .^ 2, m1, param(1) - 1 - m1);
y = x .* lsum .^ (-param(4));
end
