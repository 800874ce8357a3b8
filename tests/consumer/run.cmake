# Installs the configured ditto build into a scratch prefix, then configures, builds and runs
# tests/consumer against it with find_package(ditto 0.1 CONFIG REQUIRED). Also checks that
# asking for a version ditto is not (99.0) fails.
file(REMOVE_RECURSE ${WORK})
function(run)
  execute_process(COMMAND ${ARGV} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGV}\n${out}\n${err}")
  endif()
  message(STATUS "${out}")
endfunction()
run(${CMAKE_COMMAND} --install ${DITTO_BUILD} --prefix ${WORK}/prefix)
run(${CMAKE_COMMAND} -S ${DITTO_SOURCE}/tests/consumer -B ${WORK}/build -DCMAKE_CXX_COMPILER=${CXX}
    -DCMAKE_PREFIX_PATH=${WORK}/prefix -DCMAKE_BUILD_TYPE=Release)
run(${CMAKE_COMMAND} --build ${WORK}/build)
run(${WORK}/build/consumer)
execute_process(COMMAND ${CMAKE_COMMAND} -S ${DITTO_SOURCE}/tests/consumer -B ${WORK}/build99
    -DCMAKE_PREFIX_PATH=${WORK}/prefix -DDITTO_WANTED=99.0 RESULT_VARIABLE rc OUTPUT_QUIET ERROR_QUIET)
if(rc EQUAL 0)
  message(FATAL_ERROR "find_package(ditto 99.0) should have failed against ditto ${DITTO_VERSION}")
endif()
message(STATUS "consumer project: find_package(ditto 0.1) works, find_package(ditto 99.0) is refused")
