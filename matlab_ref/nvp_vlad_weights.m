function [w1, bias, w2] = nvp_vlad_weights(l, d, cls)
% NVP_VLAD_WEIGHTS  D x K assignment weights, 1 x K assignment bias (zeros for layerVLAD) and
%   D x K offsets (weights{2} = -centres for layerVLAD, weights{3} for layerVLADv2).
k = size(l.weights{1}, 4);
w1 = reshape(l.weights{1}, d, k);
if strcmp(l.type, 'vladv2')
  bias = reshape(l.weights{2}, 1, k);
  w2 = reshape(l.weights{3}, d, k);
else
  bias = zeros(1, k, cls);
  w2 = reshape(l.weights{2}, d, k);
end
end
