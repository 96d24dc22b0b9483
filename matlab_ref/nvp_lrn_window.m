function s = nvp_lrn_window(a, before, after)
% NVP_LRN_WINDOW  s(:,:,t,:) = sum of a(:,:,t-before : t+after,:) over channels, clipped.
c = size(a, 3);
if before >= c - 1 && after >= c - 1
  s = repmat(sum(a, 3), [1, 1, c, 1]);
  return;
end
s = zeros(size(a), class(a));
for t = 1:c
  s(:, :, t, :) = sum(a(:, :, max(1, t - before):min(c, t + after), :), 3);
end
end
