function a = nvp_softmax_rows(s)
% NVP_SOFTMAX_ROWS  Softmax along dimension 2 with the max subtracted (vl_nnsoftmax.m).
e = exp(bsxfun(@minus, s, max(s, [], 2)));
a = bsxfun(@rdivide, e, sum(e, 2));
end
