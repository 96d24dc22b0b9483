function [xp, ho, wo, fc, g] = nvp_conv_setup(x, f, pad, stride, dilate)
% NVP_CONV_SETUP  Zero-padded input, output size and groups of vl_nnconv (docs/matlab.md#matconvnet-operators).
[h, w, c, n] = size(x);
[fh, fw, fc, ~] = size(f);
g = c / fc;
xp = zeros(h + pad(1) + pad(2), w + pad(3) + pad(4), c, n, class(x));
xp(pad(1) + (1:h), pad(3) + (1:w), :, :) = x;
ho = floor((h + pad(1) + pad(2) - ((fh - 1) * dilate(1) + 1)) / stride(1)) + 1;
wo = floor((w + pad(3) + pad(4) - ((fw - 1) * dilate(2) + 1)) / stride(2)) + 1;
end
