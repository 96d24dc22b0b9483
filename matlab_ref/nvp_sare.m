function [loss, dzdy] = nvp_sare(variant, feats)
% NVP_SARE  Loss of one tuple and dL/dfeats. feats is D x N: query, positive, negatives.
%   Variants as named by deepIBL's training files (docs/matlab.md#sare-losses) and trainWeakly's
%   triplet (docs/matlab.md#triplet-loss). Our own derivation of each gradient from its loss.
q = feats(:, 1); p = feats(:, 2); ng = feats(:, 3:end);
dq = bsxfun(@minus, q, ng);            % q - n_k, D x M
dp = sum((q - p) .^ 2);                % squared distances
dn = sum(dq .^ 2, 1);                  % 1 x M
switch variant
  case 'trainGaussKernalInd'           % sum_k softplus(dp - dn_k)
    z = dp - dn;
    loss = sum(softplus(z));
    [gp, gn] = deal(sum(sigm(z)), -sigm(z));
    sq = true;
  case 'trainGaussKernalJoint'         % log(1 + sum_k exp(2 q'(n_k - p)))
    s = 2 * q' * bsxfun(@minus, ng, p);
    mx = max([0, s]);
    loss = mx + log(exp(-mx) + sum(exp(s - mx)));
    r = exp(s - loss);                 % s_k / (1 + S)
    dzdy = [2 * bsxfun(@minus, ng, p) * r', -2 * q * sum(r), 2 * q * r];
    return;
  case 'trainExpKernalInd'             % Gauss Ind on non-squared distances
    z = sqrt(dp) - sqrt(dn);
    loss = sum(softplus(z));
    [gp, gn] = deal(sum(sigm(z)), -sigm(z));
    sq = false;
  case 'trainExpKernalJoint'           % log(1 + sum_k exp(|q-p| - |q-n_k|))
    z = sqrt(dp) - sqrt(dn);
    mx = max([0, z]);
    loss = mx + log(exp(-mx) + sum(exp(z - mx)));
    r = exp(z - loss);
    [gp, gn] = deal(sum(r), -r);
    sq = false;
  case 'trainCauchyKernelInd'          % sum_k log(1 + (1 + dp) / (1 + dn_k))
    r = (1 + dp) ./ (1 + dn);
    loss = sum(log1p(r));
    [gp, gn] = deal(sum(1 ./ ((1 + dn) .* (1 + r))), -r ./ ((1 + dn) .* (1 + r)));
    sq = true;
  case 'trainCauchyKernelJoint'        % log(1 + sum_k (1 + dp) / (1 + dn_k))
    r = (1 + dp) ./ (1 + dn);
    loss = log1p(sum(r));
    [gp, gn] = deal(sum(1 ./ (1 + dn)) / (1 + sum(r)), -r ./ ((1 + dn) * (1 + sum(r))));
    sq = true;
  case 'trainWeakly'                   % sum_k max(0, dp + 0.1 - dn_k)
    viol = dp + 0.1 - dn > 0;
    loss = sum(max(0, dp + 0.1 - dn));
    [gp, gn] = deal(sum(viol), -double(viol));
    sq = true;
  otherwise
    error('nvp:sare', 'unknown variant %s', variant);
end
% chain rule through dp = |q-p|^2, dn_k = |q-n_k|^2 (or their square roots)
if sq
  cp = 2 * gp; cn = 2 * gn;
else
  cp = gp / sqrt(dp); cn = gn ./ sqrt(dn);
end
gq = cp * (q - p) + dq * cn';
dzdy = [gq, -cp * (q - p), -bsxfun(@times, dq, cn)];
end

function y = softplus(z)
y = max(z, 0) + log1p(exp(-abs(z)));
end

function y = sigm(z)
y = 1 ./ (1 + exp(-z));
end
